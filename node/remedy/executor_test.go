package remedy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node/kube"
	"herd.dev/herd/node/remedy"
	"herd.dev/herd/schema"
	"herd.dev/herd/test/controlplane"
)

var (
	cpOnce sync.Once
	cp     *controlplane.ControlPlane
	cpErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cp != nil {
		_ = cp.Stop()
	}
	os.Exit(code)
}

// client returns an admin client of the package's control plane.
func client(t *testing.T) kubernetes.Interface {
	t.Helper()
	if os.Getenv(controlplane.SkipEnv) == "1" {
		t.Skipf("%s=1: not starting a Kubernetes control plane", controlplane.SkipEnv)
	}
	cpOnce.Do(func() { cp, cpErr = controlplane.Start(context.Background(), controlplane.Options{}) })
	if cpErr != nil {
		t.Fatalf("start control plane: %v", cpErr)
	}
	return kubernetes.NewForConfigOrDie(cp.Config())
}

// lean returns the agent's own client (node/kube) of the package's control
// plane; client starts it first.
func lean(t *testing.T) *kube.Client {
	t.Helper()
	client(t)
	c, err := kube.New(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// procUnits supervises a real process per unit, as systemd does: Restart
// kills it and starts it again; the invocation is its PID. With crashAt it
// cancels the agent's context right after the n-th restart, before the
// agent hears back, as a crash would.
type procUnits struct {
	t       *testing.T
	mu      sync.Mutex
	procs   map[string]*exec.Cmd
	starts  map[string]int
	cancel  context.CancelFunc
	crashAt int // crash after this restart (1-based); 0: never
	calls   int
}

func newProcUnits(t *testing.T) *procUnits {
	u := &procUnits{t: t, procs: map[string]*exec.Cmd{}, starts: map[string]int{}}
	t.Cleanup(func() {
		for _, c := range u.procs {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	})
	for _, unit := range []string{remedy.KubeletUnit, remedy.ContainerdUnit} {
		u.start(unit)
	}
	return u
}

func (u *procUnits) start(unit string) {
	c := exec.Command("sleep", "3600")
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		u.t.Fatal(err)
	}
	u.procs[unit] = c
	u.starts[unit]++
}

func (u *procUnits) Restart(_ context.Context, unit string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	old := u.procs[unit]
	if err := old.Process.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	_ = old.Wait()
	u.start(unit)
	if u.calls++; u.calls == u.crashAt && u.cancel != nil {
		u.cancel()
	}
	return nil
}

func (u *procUnits) InvocationID(_ context.Context, unit string) (string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return fmt.Sprint(u.procs[unit].Process.Pid), nil
}

func (u *procUnits) restarts(unit string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.starts[unit] - 1
}

type rebooter struct{ n int }

func (r *rebooter) Reboot(context.Context) error { r.n++; return nil }

func newNode(t *testing.T, cs kubernetes.Interface, name, request string) *corev1.Node {
	t.Helper()
	n, err := cs.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: name, Annotations: map[string]string{schema.AnnotationRemediate: request}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return n
}

func get(t *testing.T, cs kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	n, err := cs.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIntegrationRestartOnce stops the executor at every point of a
// restart-kubelet rung (before each action, the journal written; and just
// after the restart, before the agent hears back), starts a new one from
// the same state directory, and checks that the real process restarted
// exactly once and the outcome reached the Node.
func TestIntegrationRestartOnce(t *testing.T) {
	cs := client(t)
	points := []remedy.ActionKind{remedy.ReadMarker, remedy.Restart, remedy.Report}
	for i := range len(points) + 1 {
		name := fmt.Sprintf("restart-%d", i)
		t.Run(name, func(t *testing.T) {
			units := newProcUnits(t)
			const req = "restart-kubelet@1793520300"
			newNode(t, cs, name, req)
			dir := t.TempDir()
			ex := func(hook func(remedy.ActionKind)) *remedy.Executor {
				return &remedy.Executor{Node: name, Client: lean(t), StateDir: dir, BootID: "boot-1", Units: units, Rebooter: &rebooter{},
					Capture: func(context.Context, string) error { return nil }, Clean: func(context.Context) (int, error) { return 0, nil }, Hook: hook}
			}
			ctx, cancel := context.WithCancel(t.Context())
			var first *remedy.Executor
			if i < len(points) {
				first = ex(func(k remedy.ActionKind) {
					if k == points[i] {
						cancel() // stopped here: the journal is written, the action not done
					}
				})
			} else {
				units.cancel, units.crashAt = cancel, 1 // stopped right after the restart
				first = ex(nil)
			}
			if err := first.Sync(ctx, get(t, cs, name)); err == nil {
				t.Fatal("the first executor was not stopped")
			}
			units.cancel = nil
			if err := ex(nil).Sync(t.Context(), get(t, cs, name)); err != nil {
				t.Fatal(err)
			}
			if n := units.restarts(remedy.KubeletUnit); n != 1 {
				t.Errorf("kubelet restarted %d times, want once", n)
			}
			if n := units.restarts(remedy.ContainerdUnit); n != 0 {
				t.Errorf("containerd restarted %d times", n)
			}
			got := get(t, cs, name).Annotations[schema.AnnotationRemediated]
			if got != req+" Succeeded: restarted" {
				t.Errorf("reported %q", got)
			}
			// The Node changes again (a heartbeat): nothing more is done.
			if err := ex(nil).Sync(t.Context(), get(t, cs, name)); err != nil || units.restarts(remedy.KubeletUnit) != 1 {
				t.Errorf("after the report: %v, %d restarts", err, units.restarts(remedy.KubeletUnit))
			}
		})
	}
}

// TestIntegrationReboot: the evidence is captured first, the reboot asked
// for once per boot, and reported done from the next boot.
func TestIntegrationReboot(t *testing.T) {
	cs := client(t)
	const name, req = "reboot-node", "reboot@1793520400"
	newNode(t, cs, name, req)
	dir := t.TempDir()
	var order []string
	rb := &rebooter{}
	ex := func(boot string) *remedy.Executor {
		return &remedy.Executor{Node: name, Client: lean(t), StateDir: dir, BootID: boot, Units: newProcUnits(t), Rebooter: rb,
			Capture: func(_ context.Context, reason string) error { order = append(order, "capture: "+reason); return nil },
			Clean:   func(context.Context) (int, error) { return 0, nil },
			Hook: func(k remedy.ActionKind) {
				if k == remedy.Reboot {
					order = append(order, "reboot")
				}
			}}
	}
	if err := ex("boot-1").Sync(t.Context(), get(t, cs, name)); err != nil {
		t.Fatal(err)
	}
	// The agent restarts in the same boot (the reboot has not come yet):
	// the reboot is asked for again, never a second capture.
	if err := ex("boot-1").Sync(t.Context(), get(t, cs, name)); err != nil {
		t.Fatal(err)
	}
	want := []string{"capture: before reboot (" + req + ")", "reboot", "reboot"}
	if fmt.Sprint(order) != fmt.Sprint(want) || rb.n != 2 {
		t.Fatalf("did %q (reboots %d), want %q", order, rb.n, want)
	}
	if got := get(t, cs, name).Annotations[schema.AnnotationRemediated]; got != "" {
		t.Fatalf("reported %q before the reboot", got)
	}
	if err := ex("boot-2").Sync(t.Context(), get(t, cs, name)); err != nil {
		t.Fatal(err)
	}
	if got := get(t, cs, name).Annotations[schema.AnnotationRemediated]; got != req+" Succeeded: rebooted" || rb.n != 2 {
		t.Fatalf("after the reboot: reported %q, reboots %d", got, rb.n)
	}
	var j remedy.Journal
	b, _ := os.ReadFile(dir + "/" + remedy.JournalFile)
	if err := json.Unmarshal(b, &j); err != nil || j.Phase != remedy.PhaseDone {
		t.Fatalf("journal %s: %v", b, err)
	}
}

// TestIntegrationNewRequest: the controller moves to another rung; the
// agent carries the new one out, the old one's outcome is no longer asked.
func TestIntegrationNewRequest(t *testing.T) {
	cs := client(t)
	const name = "clean-node"
	newNode(t, cs, name, "clean-sandboxes@1")
	cleaned := 0
	ex := &remedy.Executor{Node: name, Client: lean(t), StateDir: t.TempDir(), BootID: "b", Units: newProcUnits(t), Rebooter: &rebooter{},
		Capture: func(context.Context, string) error { return nil },
		Clean:   func(context.Context) (int, error) { cleaned++; return 3, nil }}
	if err := ex.Sync(t.Context(), get(t, cs, name)); err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"metadata":{"annotations":{"` + schema.AnnotationRemediate + `":"restart-containerd@2"}}}`)
	if _, err := cs.CoreV1().Nodes().Patch(t.Context(), name, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := ex.Sync(t.Context(), get(t, cs, name)); err != nil {
		t.Fatal(err)
	}
	if got := get(t, cs, name).Annotations[schema.AnnotationRemediated]; got != "restart-containerd@2 Succeeded: restarted" || cleaned != 1 {
		t.Fatalf("reported %q, cleaned %d times", got, cleaned)
	}
}
