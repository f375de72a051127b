package controlplane

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// orphanHelperEnv makes the test binary act as a parent that starts a
// control plane, prints its PIDs and waits to be killed (see
// TestChildrenDieWithParent).
const orphanHelperEnv = "HERD_CONTROLPLANE_ORPHAN_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(orphanHelperEnv) == "1" {
		orphanHelper()
		return
	}
	os.Exit(m.Run())
}

func orphanHelper() {
	cp, err := Start(context.Background(), Options{Dir: os.Getenv("HERD_CONTROLPLANE_ORPHAN_DIR")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(cp.PIDs()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	select {} // until killed
}

// waitFor polls cond every 100ms until it returns true, failing t after
// timeout with the last error cond returned.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out after %v waiting for %s (last error: %v)", timeout, what, last)
		case <-ticker.C:
		}
	}
}

// alive reports whether process pid still exists.
func alive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestControlPlane(t *testing.T) {
	var stderr syncBuffer
	cp := StartTest(t, Options{
		Stderr: &stderr,
		// Short grace periods so the node lifecycle controller acts on a
		// Node without a kubelet within seconds (defaults: 1m and 5s).
		ExtraControllerManagerFlags: []string{"--node-startup-grace-period=2s", "--node-monitor-period=1s"},
	})
	t.Logf("control plane at %s in %s; startup: %v", cp.ServerURL(), cp.Dir(), cp.StartupDurations())

	cs, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("PodDisruptionBudgetStatus", func(t *testing.T) {
		ctx := t.Context()
		const ns = metav1.NamespaceDefault
		labels := map[string]string{"app": "pdb-test"}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "pdb-test", Namespace: ns, Labels: labels},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "pause", Image: "registry.k8s.io/pause:3.10",
			}}},
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create pod: %v", err)
		}
		minAvailable := intstr.FromInt32(1)
		pdb := &policyv1.PodDisruptionBudget{
			ObjectMeta: metav1.ObjectMeta{Name: "pdb-test", Namespace: ns},
			Spec: policyv1.PodDisruptionBudgetSpec{
				MinAvailable: &minAvailable,
				Selector:     &metav1.LabelSelector{MatchLabels: labels},
			},
		}
		pdb, err := cs.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, pdb, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create PodDisruptionBudget: %v", err)
		}
		var got *policyv1.PodDisruptionBudget
		waitFor(t, time.Minute, "the disruption controller to fill the PodDisruptionBudget status", func(ctx context.Context) (bool, error) {
			got, err = cs.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, pdb.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			return got.Status.ObservedGeneration == pdb.Generation && got.Status.ExpectedPods == 1, nil
		})
		// No kubelet runs, so the pod never becomes ready.
		s := got.Status
		if s.DesiredHealthy != 1 || s.CurrentHealthy != 0 || s.DisruptionsAllowed != 0 {
			t.Errorf("PDB status = %+v; want desiredHealthy 1, currentHealthy 0, disruptionsAllowed 0", s)
		}
	})

	t.Run("NodeLifecycle", func(t *testing.T) {
		ctx := t.Context()
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "herd-test-node"}}
		if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create node: %v", err)
		}
		waitFor(t, time.Minute, "the node lifecycle controller to mark the node's Ready condition Unknown", func(ctx context.Context) (bool, error) {
			n, err := cs.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NodeReady {
					return c.Status == corev1.ConditionUnknown && c.Reason == "NodeStatusNeverUpdated", nil
				}
			}
			return false, nil
		})
	})

	t.Run("RBAC", func(t *testing.T) {
		ctx := t.Context()
		saCfg, err := cp.ServiceAccountConfig(ctx, "herd-test", "agent")
		if err != nil {
			t.Fatal(err)
		}
		saCS, err := kubernetes.NewForConfig(saCfg)
		if err != nil {
			t.Fatal(err)
		}
		// The token authenticates...
		review, err := saCS.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectReview as the ServiceAccount: %v", err)
		}
		if got, want := review.Status.UserInfo.Username, "system:serviceaccount:herd-test:agent"; got != want {
			t.Errorf("ServiceAccount token authenticates as %q; want %q", got, want)
		}
		// ...but RBAC grants it nothing.
		_, err = saCS.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("listing nodes as a ServiceAccount: err = %v; want 403 Forbidden", err)
		}
		// A second call reuses the existing ServiceAccount.
		if _, err := cp.ServiceAccountConfig(ctx, "herd-test", "agent"); err != nil {
			t.Errorf("second ServiceAccountConfig: %v", err)
		}
	})

	t.Run("Kubeconfig", func(t *testing.T) {
		cfg, err := clientcmd.BuildConfigFromFlags("", cp.KubeconfigPath())
		if err != nil {
			t.Fatalf("load kubeconfig: %v", err)
		}
		if cfg.Host != cp.ServerURL() {
			t.Errorf("kubeconfig server = %q; want %q", cfg.Host, cp.ServerURL())
		}
		kubectl := cp.KubectlPath()
		if _, err := os.Stat(kubectl); err != nil {
			t.Fatalf("no kubectl beside the control plane (test/k8s/build.sh builds it): %v", err)
		}
		cmd := exec.CommandContext(t.Context(), kubectl, "--kubeconfig", cp.KubeconfigPath(), "get", "namespace", "default", "-o", "name")
		cmd.Env = append(os.Environ(), "KUBECONFIG=")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl: %v\n%s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "namespace/default" {
			t.Errorf("kubectl get namespace default = %q", got)
		}
	})

	t.Run("Logs", func(t *testing.T) {
		logs := cp.Logs()
		for _, name := range []string{Etcd, APIServer, ControllerManager} {
			if logs[name] != cp.LogPath(name) {
				t.Errorf("Logs()[%s] = %q; want %q", name, logs[name], cp.LogPath(name))
			}
			data, err := os.ReadFile(cp.LogPath(name))
			if err != nil || !bytes.HasPrefix(data, []byte("# ")) {
				t.Errorf("log of %s: %v; starts %.40q, want the command line", name, err, data)
			}
			if !strings.Contains(stderr.String(), "\n["+name+"] ") && !strings.HasPrefix(stderr.String(), "["+name+"] ") {
				t.Errorf("Options.Stderr got no line prefixed [%s]", name)
			}
		}
	})

	t.Run("Stop", func(t *testing.T) {
		pids := cp.PIDs()
		if len(pids) != 3 {
			t.Fatalf("PIDs() = %v; want 3 processes", pids)
		}
		dir := cp.Dir()
		start := time.Now()
		if err := cp.Stop(); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		t.Logf("stopped in %v", time.Since(start))
		for name, pid := range pids {
			if alive(pid) {
				t.Errorf("%s (pid %d) still running after Stop", name, pid)
			}
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("run directory %s still exists after Stop (stat: %v)", dir, err)
		}
	})
}

// TestChildrenDieWithParent kills (SIGKILL) a process that started a control
// plane and checks that the control plane's processes die with it.
func TestChildrenDieWithParent(t *testing.T) {
	if os.Getenv(SkipEnv) == "1" {
		t.Skipf("%s=1", SkipEnv)
	}
	binDir, err := BinDir()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(),
		orphanHelperEnv+"=1",
		"HERD_CONTROLPLANE_ORPHAN_DIR="+t.TempDir(),
		"HERD_K8S_ASSETS="+binDir,
	)
	stderr, err := os.Create(filepath.Join(t.TempDir(), "helper.stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()

	var pids map[string]int
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		msg, _ := os.ReadFile(stderr.Name())
		t.Fatalf("helper printed no PIDs: %v\n%s", err, msg)
	}
	if err := json.Unmarshal(line, &pids); err != nil || len(pids) != 3 {
		t.Fatalf("helper printed %q (%v); want 3 PIDs", line, err)
	}
	t.Cleanup(func() {
		if t.Failed() { // do not leak a control plane that outlived its parent
			for _, pid := range pids {
				if p, err := os.FindProcess(pid); err == nil {
					_ = p.Kill()
				}
			}
		}
	})
	for name, pid := range pids {
		if !alive(pid) {
			t.Fatalf("%s (pid %d) not running before the parent is killed", name, pid)
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitFor(t, 10*time.Second, "the control plane to die with its parent", func(context.Context) (bool, error) {
		for name, pid := range pids {
			if alive(pid) {
				return false, fmt.Errorf("%s (pid %d) still running", name, pid)
			}
		}
		return true, nil
	})
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if got := modulePath(filepath.Join(root, "go.mod")); got != ModulePath {
		t.Errorf("module of %s/go.mod = %q; want %q", root, got, ModulePath)
	}
	if _, err := os.Stat(filepath.Join(root, "test", "k8s", "build.sh")); err != nil {
		t.Errorf("build script: %v", err)
	}
}

func TestModulePath(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ gomod, want string }{
		{"module herd.dev/herd\n\ngo 1.26\n", "herd.dev/herd"},
		{"// comment\nmodule \"herd.dev/herd\" // trailing\n", "herd.dev/herd"},
		{"module herd.dev/herd/test/k8s\n", "herd.dev/herd/test/k8s"},
		{"modules x\n", ""},
	} {
		path := filepath.Join(dir, "go.mod")
		if err := os.WriteFile(path, []byte(tc.gomod), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := modulePath(path); got != tc.want {
			t.Errorf("modulePath(%q) = %q; want %q", tc.gomod, got, tc.want)
		}
	}
}

func TestExitedAddrInUse(t *testing.T) {
	log := filepath.Join(t.TempDir(), "kube-apiserver.log")
	msg := "E1128 run.go:72] \"command failed\" err=\"failed to listen on 127.0.0.1:6443: listen tcp 127.0.0.1:6443: bind: address already in use\"\n"
	if err := os.WriteFile(log, []byte(msg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &process{name: APIServer, logPath: log, done: make(chan struct{})}
	if err := p.exited(); err != nil {
		t.Fatalf("exited() of a running process = %v", err)
	}
	p.waitErr = errors.New("exit status 1")
	close(p.done)
	err := p.exited()
	if !errors.Is(err, errAddrInUse) {
		t.Errorf("exited() = %v; want errAddrInUse so Start retries with new ports", err)
	}
}

func TestFreePorts(t *testing.T) {
	ports, err := freePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p <= 0 || seen[p] {
			t.Errorf("freePorts = %v: want distinct positive ports", ports)
		}
		seen[p] = true
	}
}
