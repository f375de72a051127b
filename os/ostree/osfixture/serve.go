package osfixture

import (
	"net"
	"net/http"
	"strings"
	"sync/atomic"
)

// Server serves a repository directory over HTTP on loopback, as nodes pull
// an archive-mode repository, and counts what it sent.
type Server struct {
	URL   string
	srv   *http.Server
	bytes atomic.Int64
	delta atomic.Int64 // requests under deltas/ or delta-indexes/
	reqs  atomic.Int64
}

// Serve starts serving dir (Go's file server) on a free loopback port.
func Serve(dir string) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{URL: "http://" + ln.Addr().String() + "/"}
	files := http.FileServer(http.Dir(dir))
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.reqs.Add(1)
		if strings.HasPrefix(r.URL.Path, "/deltas/") || strings.HasPrefix(r.URL.Path, "/delta-indexes/") {
			s.delta.Add(1)
		}
		files.ServeHTTP(&countingWriter{ResponseWriter: w, n: &s.bytes}, r)
	})}
	go s.srv.Serve(ln)
	return s, nil
}

// Stats returns the body bytes sent, the requests served, and of those the
// requests for static delta files, since the last Reset.
func (s *Server) Stats() (bytes, requests, deltaRequests int64) {
	return s.bytes.Load(), s.reqs.Load(), s.delta.Load()
}

// Reset zeroes the counters.
func (s *Server) Reset() {
	s.bytes.Store(0)
	s.reqs.Store(0)
	s.delta.Store(0)
}

// Close stops the server.
func (s *Server) Close() error { return s.srv.Close() }

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.n.Add(int64(n))
	return n, err
}
