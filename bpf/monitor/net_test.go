package monitor

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"herd.dev/herd/bpf/cgroups"
	"herd.dev/herd/bpf/internal/testkernel"
)

// helperEnv makes the test binary run a helper instead of the tests.
const helperEnv = "HERD_MONITOR_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "tcp":
		tcpHelper()
	default:
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// tcpHelper connects to itself over loopback, prints the server's port,
// waits for a line on stdin, then sends a little data every 20 ms until
// killed.
func tcpHelper() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c)
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	fmt.Scanln()
	buf := make([]byte, 512)
	for {
		if _, err := c.Write(buf); err != nil {
			os.Exit(1)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// netns creates a network namespace with loopback up, deleted when the
// test ends.
func netns(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "herd-test-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { run(t, "ip", "netns", "delete", name) })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// TestTCPRetransmits connects a client and a server over loopback in a
// network namespace of the test's, both in one cgroup, then drops every
// segment to the server's port as it arrives (iptables INPUT: a drop on
// OUTPUT fails the send itself, which TCP does not count as sent, so
// nothing is retransmitted): the client's retransmission timer fires, in
// softirq. The v2 monitor charges the
// retransmits to the cgroup that created the socket; the v1 monitor, to
// the node.
func TestTCPRetransmits(t *testing.T) {
	v2 := newMonitor(t, cgroups.V2, TCPRetransmits)
	v1 := newMonitor(t, cgroups.V1Memory, TCPRetransmits)
	cg := testkernel.NewCgroup(t, v2.Hierarchy(), "tcp")
	ns := netns(t)
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=tcp")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cg.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	port := readLine(t, stdout)
	nodeBefore := snap(t, v1).retrans[0]
	rule := []string{"INPUT", "-p", "tcp", "--dport", port, "-j", "DROP"}
	run(t, "ip", append([]string{"netns", "exec", ns, "iptables", "-A"}, rule...)...)
	// Lift the rule before the helper is killed, so that its connection
	// closes instead of retransmitting on as an orphan.
	t.Cleanup(func() { run(t, "ip", append([]string{"netns", "exec", ns, "iptables", "-D"}, rule...)...) })
	io.WriteString(stdin, "go\n")

	const want = 3
	testkernel.Eventually(t, 30*time.Second, func() (bool, string) {
		got := snap(t, v2).retrans[cg.ID]
		return got >= want, fmt.Sprintf("%d retransmits charged to %s, want %d (all: %v)", got, cg.Path, want, snap(t, v2).retrans)
	})
	testkernel.Eventually(t, 10*time.Second, func() (bool, string) {
		got := snap(t, v1).retrans[0] - nodeBefore
		return got >= want, fmt.Sprintf("%d retransmits charged to the node by the v1 monitor, want %d", got, want)
	})
	if got := snap(t, v1).retrans; len(got) != 1 {
		t.Errorf("v1 monitor charged retransmits to cgroups %v, want the node (0) only", got)
	}
	metrics := gather(t, v1)
	if !strings.Contains(metrics, `herd_monitor_info{cgroup_mode="v1-memory",tcp_attribution="node"} 1`) {
		t.Errorf("v1 metrics do not say retransmits are per node:\n%s", metrics)
	}
	if !strings.Contains(metrics, `herd_monitor_tcp_retransmits_total{cgroup="",container="",namespace="",pod=""}`) {
		t.Errorf("v1 metrics lack the node's retransmits:\n%s", metrics)
	}
}

// TestBlockIOLatency writes and reads 4 KiB blocks with O_DIRECT on a loop
// device over a file: each is one request, timed from issue to completion,
// both ways biolatency knows: from the stamp the queue keeps (loop devices
// throttle writeback, so their queues keep one) and, with QUEUE_FLAG_STATS
// left unknown, from its own stamp in the in-flight map.
func TestBlockIOLatency(t *testing.T) {
	for _, own := range []bool{false, true} {
		t.Run(map[bool]string{false: "kernel-stamp", true: "own-stamp"}[own], func(t *testing.T) {
			if own {
				def := definitions[BlockIOLatency]
				definitions[BlockIOLatency] = programDef{load: def.load, tracepoints: def.tracepoints, members: def.members}
				t.Cleanup(func() { definitions[BlockIOLatency] = def })
			}
			testBlockIOLatency(t, own)
		})
	}
}

func testBlockIOLatency(t *testing.T, own bool) {
	m := newMonitor(t, cgroups.V2, BlockIOLatency)
	var flag uint32
	if err := m.loaded[BlockIOLatency].coll.Variables["queue_flag_stats"].Get(&flag); err != nil {
		t.Fatal(err)
	}
	if own != (flag == 64) {
		t.Fatalf("queue_flag_stats = %d with own stamps %v", flag, own)
	}
	file := t.TempDir() + "/disk"
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, 16<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", file).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { run(t, "losetup", "--detach", loop) })
	var st unix.Stat_t
	if err := unix.Stat(loop, &st); err != nil {
		t.Fatal(err)
	}
	dev := unix.Major(st.Rdev)<<20 | unix.Minor(st.Rdev)

	const blocks = 64
	before := count(snap(t, m).blockIO[dev])
	directIO(t, loop, blocks)
	testkernel.Eventually(t, 10*time.Second, func() (bool, string) {
		got := count(snap(t, m).blockIO[dev]) - before
		return got >= 2*blocks, fmt.Sprintf("%d requests timed on %s, want %d", got, loop, 2*blocks)
	})
	h := snap(t, m).blockIO[dev]
	if h.Slots[0] != 0 || h.SumNs == 0 {
		t.Errorf("requests on %s timed under 1µs: %v", loop, h.Slots)
	}
	name := strings.TrimPrefix(loop, "/dev/")
	metrics := gather(t, m)
	want := fmt.Sprintf(`herd_monitor_block_io_latency_seconds_count{device=%q} %d`, name, count(h))
	if !strings.Contains(metrics, want) {
		t.Errorf("metrics lack %s:\n%s", want, metrics)
	}
}

// directIO writes, then reads, n 4 KiB blocks of path with O_DIRECT.
func directIO(t testing.TB, path string, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	for i := range n {
		if _, err := f.WriteAt(buf, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if _, err := f.ReadAt(buf, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
}
