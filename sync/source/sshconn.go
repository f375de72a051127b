package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-git/v5/plumbing/format/pktline"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/transport"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"
)

// sshIdleTimeout is how long an unused SSH connection is kept for the next
// check. Longer than the default poll interval, so polls reuse it; short
// enough that a connection silently dropped by a NAT is not trusted.
const sshIdleTimeout = 5 * time.Minute

// sshConn keeps one SSH connection to the fleet repository's server open
// between checks, as OpenSSH's ControlPersist does, and runs each
// git-upload-pack in a new session on it. go-git's SSH transport dials,
// exchanges keys and authenticates for every session; on a real sshd that
// is about 85 ms of a check, and a session on an open connection about 5 ms
// (docs/benchmarks.md).
//
// A connection that fails in any way is closed and the next check dials
// again; an operation never outlives its context (the connection's
// deadline is the context's while a session is open).
type sshConn struct {
	addr   string
	config *ssh.ClientConfig

	mu       sync.Mutex
	conn     net.Conn
	client   *ssh.Client
	lastUsed time.Time
	dials    int // connections made, for tests and logs
}

// newSSHConn returns a persistent connection for ep, or nil when go-git's
// own transport must be used: not an ssh:// URL, or no explicit SSH key
// (the SSH agent fallback stays go-git's).
func newSSHConn(ep *transport.Endpoint, auth transport.AuthMethod) (*sshConn, error) {
	am, ok := auth.(gitssh.AuthMethod)
	if ep.Protocol != "ssh" || !ok {
		return nil, nil
	}
	cfg, err := am.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("ssh client config: %w", err)
	}
	port := ep.Port
	if port == 0 {
		port = gitssh.DefaultPort
	}
	return &sshConn{addr: net.JoinHostPort(ep.Host, strconv.Itoa(port)), config: cfg}, nil
}

// uploadPack starts git-upload-pack for path in a new session, dialling
// when there is no usable connection. A failure on a reused connection is
// retried once on a fresh one.
func (c *sshConn) uploadPack(ctx context.Context, path string) (*sshSession, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil && time.Since(c.lastUsed) > sshIdleTimeout {
		c.closeLocked()
	}
	for {
		reused := c.client != nil
		if !reused {
			if err := c.dialLocked(ctx); err != nil {
				return nil, err
			}
		}
		s, err := c.startLocked(ctx, path)
		if err == nil {
			c.lastUsed = time.Now()
			return s, nil
		}
		c.closeLocked()
		if !reused || ctx.Err() != nil {
			return nil, err
		}
	}
}

func (c *sshConn) dialLocked(ctx context.Context) error {
	d := net.Dialer{Timeout: c.config.Timeout}
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return fmt.Errorf("ssh: dial %s: %w", c.addr, err)
	}
	setDeadline(ctx, conn)
	sc, chans, reqs, err := ssh.NewClientConn(conn, c.addr, c.config)
	if err != nil {
		_ = conn.Close()
		return fmt.Errorf("ssh: %s: %w", c.addr, err)
	}
	c.conn, c.client = conn, ssh.NewClient(sc, chans, reqs)
	c.dials++
	return nil
}

// startLocked opens a session and starts git-upload-pack in it, quoting
// the path as git does.
func (c *sshConn) startLocked(ctx context.Context, path string) (*sshSession, error) {
	setDeadline(ctx, c.conn)
	sess, err := c.client.NewSession()
	if err != nil {
		return nil, fmt.Errorf("ssh: new session: %w", err)
	}
	s := &sshSession{conn: c, sess: sess}
	sess.Stderr = &s.stderr
	if s.stdin, err = sess.StdinPipe(); err == nil {
		s.stdout, err = sess.StdoutPipe()
	}
	if err == nil {
		err = sess.Start("git-upload-pack " + shellQuote(path))
	}
	if err != nil {
		_ = sess.Close()
		return nil, fmt.Errorf("ssh: start git-upload-pack: %w", err)
	}
	return s, nil
}

// setDeadline bounds the connection's I/O by ctx's deadline, if any.
func setDeadline(ctx context.Context, conn net.Conn) {
	d, _ := ctx.Deadline()
	_ = conn.SetDeadline(d)
}

// release ends the session's use of the connection: no deadline while it
// waits for the next check. A broken connection is closed instead.
func (c *sshConn) release(broken bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return
	}
	if broken {
		c.closeLocked()
		return
	}
	_ = c.conn.SetDeadline(time.Time{})
}

// close closes the connection; the next uploadPack dials again.
func (c *sshConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked()
}

func (c *sshConn) closeLocked() {
	if c.client != nil {
		_ = c.client.Close()
	}
	c.conn, c.client = nil, nil
}

// sshSession is one git-upload-pack on an sshConn; it implements the part
// of transport.UploadPackSession the source uses, following the protocol
// as go-git's own sessions do.
type sshSession struct {
	conn    *sshConn
	sess    *ssh.Session
	stdin   io.WriteCloser
	stdout  io.Reader
	stderr  bytes.Buffer
	adv     *packp.AdvRefs
	packRun bool
	failed  bool
	closed  bool
}

var _ transport.UploadPackSession = (*sshSession)(nil)

func (s *sshSession) AdvertisedReferences() (*packp.AdvRefs, error) {
	return s.AdvertisedReferencesContext(context.Background())
}

// AdvertisedReferencesContext reads the remote's ref advertisement.
func (s *sshSession) AdvertisedReferencesContext(context.Context) (*packp.AdvRefs, error) {
	if s.adv != nil {
		return s.adv, nil
	}
	ar := packp.NewAdvRefs()
	if err := ar.Decode(s.stdout); err != nil {
		return nil, s.advError(err)
	}
	if ar.IsEmpty() {
		return nil, transport.ErrEmptyRemoteRepository
	}
	transport.FilterUnsupportedCapabilities(ar.Capabilities)
	s.adv = ar
	return ar, nil
}

func (s *sshSession) advError(err error) error {
	var line *pktline.ErrorLine
	switch {
	case errors.Is(err, packp.ErrEmptyAdvRefs):
		return transport.ErrEmptyRemoteRepository
	case errors.As(err, &line):
		s.failed = true
		return fmt.Errorf("git-upload-pack: %s", line.Text)
	case errors.Is(err, packp.ErrEmptyInput):
		// The command failed before it spoke: the reason is on stderr,
		// which is complete once the session ends.
		s.failed = true
		_ = s.sess.Wait()
		if msg := strings.TrimSpace(s.stderr.String()); msg != "" {
			return fmt.Errorf("git-upload-pack: %s", msg)
		}
		return fmt.Errorf("git-upload-pack: %w", io.ErrUnexpectedEOF)
	}
	s.failed = true
	return fmt.Errorf("read ref advertisement: %w", err)
}

// UploadPack sends the wants and haves and returns the server's response;
// what follows the acknowledgements is the pack.
func (s *sshSession) UploadPack(ctx context.Context, req *packp.UploadPackRequest) (*packp.UploadPackResponse, error) {
	if req.IsEmpty() {
		return nil, transport.ErrEmptyUploadPackRequest
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if _, err := s.AdvertisedReferencesContext(ctx); err != nil {
		return nil, err
	}
	s.packRun = true
	err := req.UploadRequest.Encode(s.stdin)
	if err == nil {
		err = req.UploadHaves.Encode(s.stdin, true)
	}
	if err == nil {
		err = pktline.NewEncoder(s.stdin).Encodef("done\n")
	}
	if err == nil {
		err = s.stdin.Close()
	}
	if err != nil {
		s.failed = true
		return nil, fmt.Errorf("send upload-pack request: %w", err)
	}
	res := packp.NewUploadPackResponse(req)
	if err := res.Decode(io.NopCloser(s.stdout)); err != nil {
		s.failed = true
		return nil, fmt.Errorf("read upload-pack response: %w", err)
	}
	return res, nil
}

// Close ends the session: a flush tells an upload-pack that was only asked
// for its refs to exit cleanly. The connection stays open for the next
// check unless the session failed.
func (s *sshSession) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if !s.packRun && !s.failed {
		if _, err := s.stdin.Write(pktline.FlushPkt); err != nil {
			s.failed = true
		}
	}
	_ = s.stdin.Close()
	err := s.sess.Close()
	if errors.Is(err, io.EOF) {
		err = nil
	}
	s.conn.release(s.failed || err != nil)
	return err
}

// shellQuote quotes s for the remote shell as git's sq_quote_buf does.
func shellQuote(s string) string {
	var b strings.Builder
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '\'' || c == '!' {
			b.WriteString(`'\` + string(c) + `'`)
			continue
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('\'')
	return b.String()
}
