package receiver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// childEnv, when set, makes the test binary serve a receiver on the
// address it names instead of running tests (see TestMain).
const childEnv = "HERD_RECEIVER_FLOOD_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		serveChild()
		return
	}
	os.Exit(m.Run())
}

// serveChild serves a receiver on a free loopback port, prints the address
// and serves until stdin closes.
func serveChild() {
	rc, err := New(Options{Branch: "main", Secret: secret, Token: "ci-token", Trigger: func(context.Context, Delivery) error { return nil }})
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	srv := &Server{Handler: rc}
	if err := srv.Serve(ctx, ln); err != nil {
		panic(err)
	}
}

// TestFloodBoundedMemory sends 64 concurrent unauthenticated or badly
// signed deliveries of 32 MiB each (2 GiB in all) to a receiver in a child
// process and checks the child's peak RSS stays bounded: bodies are refused
// before they are read, or read no further than the 1 MiB limit.
func TestFloodBoundedMemory(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + strings.TrimSpace(addr) + "/"
	base := peakRSSKiB(t, cmd.Process.Pid)

	const size, conns = 32 << 20, 64
	kinds := []http.Header{
		{},                                // no credentials: refused before the body
		{"X-Gitlab-Event": {"Push Hook"}}, // no token: refused before the body
		{"X-Github-Event": {"push"}, "X-Hub-Signature-256": {"sha256=" + strings.Repeat("00", 32)}}, // read to the limit, then 413
		{"X-Event-Key": {"repo:refs_changed"}, "X-Hub-Signature": {"sha256=" + strings.Repeat("ab", 32)}},
	}
	var wg sync.WaitGroup
	codes := make(chan string, conns)
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: conns, DisableKeepAlives: true}, Timeout: time.Minute}
	for i := range conns {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, url, io.LimitReader(endless{}, size))
			req.Header = kinds[i%len(kinds)].Clone()
			if i%2 == 0 {
				req.ContentLength = -1 // chunked: the length is not announced
			}
			resp, err := client.Do(req)
			if err != nil {
				codes <- "error" // the server may close the connection mid-upload
				return
			}
			resp.Body.Close()
			codes <- strconv.Itoa(resp.StatusCode)
		})
	}
	wg.Wait()
	close(codes)
	seen := map[string]int{}
	for c := range codes {
		seen[c]++
	}
	if seen["202"] > 0 || seen["200"] > 0 {
		t.Fatalf("unauthenticated deliveries accepted: %v", seen)
	}
	peak := peakRSSKiB(t, cmd.Process.Pid)
	t.Logf("answers %v; child peak RSS %d KiB before, %d KiB after %d x %d MiB", seen, base, peak, conns, size>>20)
	// 4 deliveries read to the 1 MiB limit at once, plus buffers of 64
	// connections: far below 32 MiB of growth. Reading the bodies would
	// grow by gigabytes.
	if grown := peak - base; grown > 32<<10 {
		t.Fatalf("peak RSS grew by %d KiB, want < 32 MiB", grown)
	}
}

// peakRSSKiB reads VmHWM (peak resident set) of a process.
func peakRSSKiB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmHWM")
	return 0
}
