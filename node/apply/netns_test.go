package apply_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"herd.dev/herd/node/apply"
)

// helperEnv, when set, makes the test binary the agent of TestSysctlReachesHost:
// it applies one sysctl with the host's namespaces at the given directory.
const helperEnv = "HERD_TEST_SYSCTL_HOST_NS"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		*apply.HostNamespaces = func(string) string { return dir }
		changed, err := apply.ApplySysctls("/", map[string]string{"net.ipv4.ip_forward": "1"})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(strings.Join(changed, ","))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// ipNetns creates a network namespace for the test and returns its name.
func ipNetns(t *testing.T, role string) string {
	t.Helper()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "herd-" + role + "-" + hex.EncodeToString(rnd[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s (the test needs root and iproute2: make deps)", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", name).Run() })
	return name
}

func sysctlIn(t *testing.T, netns, key string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", netns, "cat", filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))).Output()
	if err != nil {
		t.Fatalf("read %s in %s: %v", key, netns, err)
	}
	return strings.TrimSpace(string(out))
}

// An agent in a network namespace of its own (a pod without hostNetwork)
// sets a net.* sysctl: the value must change in the host's namespace, not
// in the agent's. Two namespaces made by the test play the host and the
// pod; the agent is this test binary, started inside the pod's.
func TestSysctlReachesHost(t *testing.T) {
	host, pod := ipNetns(t, "host"), ipNetns(t, "pod")
	if got := sysctlIn(t, host, "net.ipv4.ip_forward"); got != "0" {
		t.Fatalf("a new namespace has ip_forward %s", got)
	}
	cmd := exec.Command("ip", "netns", "exec", pod, os.Args[0])
	// The helper reaches the host's namespace as the agent reaches PID 1's:
	// through a directory whose "net" file is the namespace.
	dir := t.TempDir()
	if err := os.Symlink("/run/netns/"+host, filepath.Join(dir, "net")); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("agent in %s: %v: %s", pod, err, out)
	}
	if strings.TrimSpace(string(out)) != "net.ipv4.ip_forward" {
		t.Errorf("agent reports it changed %q", out)
	}
	if got := sysctlIn(t, host, "net.ipv4.ip_forward"); got != "1" {
		t.Errorf("the host's net.ipv4.ip_forward is %s, want 1", got)
	}
	if got := sysctlIn(t, pod, "net.ipv4.ip_forward"); got != "0" {
		t.Errorf("the agent's own namespace changed: ip_forward %s", got)
	}
}
