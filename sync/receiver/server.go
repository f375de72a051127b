package receiver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/net/netutil"
)

// Server limits: a slow or flooding client holds at most one of MaxConns
// connections, for at most the timeouts below.
const (
	MaxConns          = 64
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 15 * time.Second // headers and body
	WriteTimeout      = 15 * time.Second
	IdleTimeout       = 60 * time.Second
	MaxHeaderBytes    = 32 << 10
)

// Server serves a Receiver on one address.
type Server struct {
	Addr    string
	Handler http.Handler
	ready   atomic.Bool
}

// Ready reports whether the server is listening (for /readyz).
func (s *Server) Ready(*http.Request) error {
	if !s.ready.Load() {
		return errors.New("webhook receiver not listening yet")
	}
	return nil
}

// Start serves until ctx ends. It runs on every replica (the receiver only
// records requests), so a Service may route deliveries to any of them.
func (s *Server) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("webhook receiver: %w", err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/", s.Handler)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	s.ready.Store(true)
	defer s.ready.Store(false)
	if err := srv.Serve(netutil.LimitListener(ln, MaxConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// NeedLeaderElection is false: every replica receives deliveries.
func (s *Server) NeedLeaderElection() bool { return false }
