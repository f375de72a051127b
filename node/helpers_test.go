package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node"
	"herd.dev/herd/node/apply"
	"herd.dev/herd/node/kube"
	"herd.dev/herd/node/metrics"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
	"herd.dev/herd/test/controlplane"
)

// The integration tests drive the real ostree CLI on real sysroots and a
// real kube-apiserver (test/controlplane). They fail, not skip, when ostree
// or root is missing; HERD_SKIP_CONTROLPLANE=1 skips those that need the
// control plane.
func TestMain(m *testing.M) {
	if _, err := exec.LookPath("ostree"); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: node tests need the ostree CLI; install with: apt-get install -y ostree gnupg")
		os.Exit(1)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "FAIL: node tests need root: ostree admin deploy refuses to run otherwise")
		os.Exit(1)
	}
	code := m.Run()
	if cp != nil {
		if err := cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop control plane:", err)
		}
	}
	os.Exit(code)
}

var (
	cpOnce sync.Once
	cp     *controlplane.ControlPlane
	cpErr  error
)

// cluster returns the package's control plane, started on first use.
func cluster(t testing.TB) *controlplane.ControlPlane {
	t.Helper()
	if os.Getenv(controlplane.SkipEnv) == "1" {
		t.Skipf("%s=1: not starting a Kubernetes control plane", controlplane.SkipEnv)
	}
	cpOnce.Do(func() {
		cp, cpErr = controlplane.Start(context.Background(), controlplane.Options{})
	})
	if cpErr != nil {
		t.Fatalf("start control plane: %v", cpErr)
	}
	return cp
}

func adminClient(t testing.TB) kubernetes.Interface {
	t.Helper()
	cfg := cluster(t).Config()
	cfg.QPS, cfg.Burst = 100, 200
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// agentClient is the agent's own client, with admin rights.
func agentClient(t testing.TB) *kube.Client {
	t.Helper()
	c, err := kube.New(cluster(t).Config())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newMetrics(t testing.TB) *metrics.Agent {
	t.Helper()
	m, err := metrics.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// shmDir is a temporary directory on tmpfs when /dev/shm exists: ostree
// admin deploy freezes the file system holding /boot, which must not be the
// disk everything else runs on.
func shmDir(t testing.TB) string {
	t.Helper()
	base := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		base = "/dev/shm"
	}
	dir, err := os.MkdirTemp(base, "herd-node-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newRepo(t testing.TB, opts osfixture.Options) *osfixture.Repo {
	t.Helper()
	r, err := osfixture.NewRepo(t.Context(), shmDir(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// Sysctls the test nodes' kernels know.
var knownSysctls = map[string]string{
	"vm.max_map_count":              "65530",
	"net.core.somaxconn":            "4096",
	"fs.inotify.max_user_watches":   "8192",
	"fs.inotify.max_user_instances": "128",
}

// testNode is one node: a Node object, a root with /proc/sys and a boot
// ID, a real OSTree sysroot booted into the repo's first commit, and an
// agent that can be started, killed and rebooted.
type testNode struct {
	t        *testing.T
	name     string
	cs       kubernetes.Interface
	repo     *osfixture.Repo
	root     string
	state    string
	sysroot  *ostree.Sysroot
	services *recorder
	reboots  chan struct{}
	// rebootsSeen are the reboot requests awaitReboot received.
	rebootsSeen int
	metrics     *metrics.Agent
	boots       int

	cancel context.CancelFunc
	done   chan error
}

var nameRE = regexp.MustCompile(`[^a-z0-9]+`)

func newTestNode(t *testing.T, repo *osfixture.Repo, sopts osfixture.SysrootOptions) *testNode {
	t.Helper()
	cs := adminClient(t)
	name := strings.Trim(nameRE.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 50 {
		name = name[len(name)-50:]
	}
	name = strings.Trim(name, "-") + fmt.Sprintf("-%d", time.Now().UnixNano()%100000)
	dir := shmDir(t)
	n := &testNode{
		t: t, name: name, cs: cs, repo: repo,
		root:     filepath.Join(dir, "root"),
		state:    filepath.Join(dir, "root/var/lib/herd"),
		services: &recorder{},
		reboots:  make(chan struct{}, 1),
		metrics:  newMetrics(t),
	}
	for k, v := range knownSysctls {
		n.writeRootFile(apply.SysctlFile(k), v+"\n")
	}
	n.newBootID()
	if sopts.Remote == "" {
		sopts.Remote = osfixture.DefaultRemote
	}
	s, err := repo.NewSysroot(t.Context(), filepath.Join(dir, "sysroot"), sopts)
	if err != nil {
		t.Fatal(err)
	}
	n.sysroot = s
	_, err = cs.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   name,
		Labels: map[string]string{"kubernetes.io/hostname": name},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.stop()
		_ = cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return n
}

func (n *testNode) writeRootFile(rel, content string) {
	n.t.Helper()
	p := filepath.Join(n.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		n.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

func (n *testNode) readRootFile(rel string) string {
	n.t.Helper()
	b, err := os.ReadFile(filepath.Join(n.root, rel))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		n.t.Fatal(err)
	}
	return string(b)
}

func (n *testNode) newBootID() {
	n.boots++
	n.writeRootFile("proc/sys/kernel/random/boot_id", fmt.Sprintf("00000000-0000-4000-8000-%012d\n", n.boots))
}

// start runs an agent; hook, if set, sees every hook point and may call
// the kill function it is given to kill the agent right there.
func (n *testNode) start(hook func(point string, kill func())) {
	n.t.Helper()
	n.startWith(func(o *node.Options, kill func()) {
		if hook != nil {
			o.Hook = func(p string) { hook(p, kill) }
		}
	})
}

// startWith runs an agent with the options edit makes; kill cancels it.
func (n *testNode) startWith(edit func(o *node.Options, kill func())) {
	n.t.Helper()
	if n.cancel != nil {
		n.t.Fatal("agent already running")
	}
	ctx, cancel := context.WithCancel(context.Background())
	opts := node.Options{
		NodeName:      n.name,
		Client:        agentClient(n.t),
		Sysroot:       n.sysroot,
		Root:          n.root,
		StateDir:      n.state,
		Services:      n.services,
		Rebooter:      rebooter(n.reboots),
		Metrics:       n.metrics,
		Log:           slog.New(slog.NewTextHandler(testWriter{n.t}, nil)),
		RebootTimeout: time.Hour,
	}
	if edit != nil {
		edit(&opts, cancel)
	}
	a, err := node.New(opts)
	if err != nil {
		cancel()
		n.t.Fatal(err)
	}
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() { n.done <- a.Run(ctx) }()
}

// wait waits for the running agent to return (after a kill in a hook).
func (n *testNode) wait() {
	n.t.Helper()
	select {
	case err := <-n.done:
		if err != nil {
			n.t.Errorf("agent Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		n.t.Fatal("agent did not stop")
	}
	n.cancel()
	n.cancel, n.done = nil, nil
}

func (n *testNode) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.wait()
}

// rebootNow plays the reboot the agent asked for: the agent stops, the
// staged deployment becomes the booted one, the boot ID changes, and a new
// agent starts from the state directory.
func (n *testNode) rebootNow(boot bool) {
	n.t.Helper()
	n.stop()
	if boot {
		if err := n.sysroot.SimulateBoot(n.t.Context()); err != nil {
			n.t.Fatal(err)
		}
	}
	n.newBootID()
	n.start(nil)
}

// awaitReboot waits for the agent to request a reboot and count it: the
// request reaches the test just before the agent counts it, and a test
// that stops the agent in between would lose the count.
func (n *testNode) awaitReboot() {
	n.t.Helper()
	select {
	case <-n.reboots:
		n.rebootsSeen++
	case <-time.After(60 * time.Second):
		n.t.Fatalf("no reboot requested; node annotations: %v", n.annotations())
	}
	deadline := time.Now().Add(10 * time.Second)
	for n.metrics.Snapshot().Reboots < n.rebootsSeen {
		if time.Now().After(deadline) {
			n.t.Fatalf("the agent requested a reboot but never counted it: %+v", n.metrics.Snapshot())
		}
		<-time.After(10 * time.Millisecond)
	}
}

func (n *testNode) noRebootRequested() {
	n.t.Helper()
	select {
	case <-n.reboots:
		n.t.Fatal("a reboot was requested")
	default:
	}
}

func (n *testNode) annotations() map[string]string {
	n.t.Helper()
	no, err := n.cs.CoreV1().Nodes().Get(n.t.Context(), n.name, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	return no.Annotations
}

// setDesired sets the controller's annotations.
func (n *testNode) setDesired(config, commit string) {
	n.t.Helper()
	setAnnotations(n.t, n.cs, n.name, map[string]any{
		schema.AnnotationDesiredConfig: config,
		schema.AnnotationDesiredOS:     commit,
	})
}

func setAnnotations(t testing.TB, cs kubernetes.Interface, name string, ann map[string]any) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if _, err := cs.CoreV1().Nodes().Patch(t.Context(), name, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitState polls the Node until its state annotation is state, and returns
// the annotations.
func (n *testNode) waitState(state schema.NodeState, timeout time.Duration) map[string]string {
	n.t.Helper()
	var ann map[string]string
	ok := poll(n.t, timeout, func() bool {
		ann = n.annotations()
		return ann[schema.AnnotationState] == string(state)
	})
	if !ok {
		n.t.Fatalf("node %s: state %q after %v, want %s; annotations %v", n.name, ann[schema.AnnotationState], timeout, state, ann)
	}
	return ann
}

// waitUpToDate waits until the node reports Idle at config and commit.
func (n *testNode) waitUpToDate(config, commit string) map[string]string {
	n.t.Helper()
	var ann map[string]string
	ok := poll(n.t, 60*time.Second, func() bool {
		ann = n.annotations()
		return ann[schema.AnnotationState] == string(schema.StateIdle) &&
			ann[schema.AnnotationCurrentConfig] == config && ann[schema.AnnotationOSBooted] == commit
	})
	if !ok {
		n.t.Fatalf("node %s not up to date at config %s, commit %s: annotations %v", n.name, config, commit, ann)
	}
	return ann
}

// poll calls cond every 20ms until it is true or the deadline passes.
func poll(t testing.TB, timeout time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-tick.C:
		case <-t.Context().Done():
			return false
		}
	}
}

func (n *testNode) booted() ostree.Deployment {
	n.t.Helper()
	st, err := n.sysroot.Status(n.t.Context())
	if err != nil {
		n.t.Fatal(err)
	}
	d, ok := st.Booted()
	if !ok {
		n.t.Fatal("no booted deployment")
	}
	return *d
}

// publishRender stores r as its rendered ConfigMap and returns its hash.
func publishRender(t testing.TB, cs kubernetes.Interface, r *schema.Rendered) string {
	t.Helper()
	data, err := schema.MarshalRendered(r)
	if err != nil {
		t.Fatal(err)
	}
	hash := r.Hash()
	publishRaw(t, cs, hash, string(data))
	return hash
}

func publishRaw(t testing.TB, cs kubernetes.Interface, hash, data string) {
	t.Helper()
	ctx := t.Context()
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: schema.RenderedNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	immutable := true
	_, err = cs.CoreV1().ConfigMaps(schema.RenderedNamespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:   schema.RenderedName(hash),
			Labels: map[string]string{schema.LabelRendered: "true"},
		},
		Immutable: &immutable,
		Data:      map[string]string{schema.RenderedDataKey: data},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// render builds a render for the repo's commit with the given knobs.
type spec struct {
	commit  string
	remote  *schema.RemoteConfig
	kargs   []string
	maxPods int
	sysctl  map[string]string
	files   []schema.File
}

func render(t testing.TB, repo *osfixture.Repo, s spec) *schema.Rendered {
	t.Helper()
	cfg := schema.NodeConfig{
		OS:         schema.OSConfig{Ref: repo.Ref, Commit: s.commit, Remote: s.remote},
		KernelArgs: s.kargs,
		Sysctl:     s.sysctl,
		Files:      s.files,
	}
	if cfg.OS.Remote == nil {
		cfg.OS.Remote = &schema.RemoteConfig{Name: osfixture.DefaultRemote, URL: repo.URL}
	}
	if s.maxPods != 0 {
		mp := s.maxPods
		cfg.Kubelet = &schema.Kubelet{MaxPods: &mp}
	}
	r, err := schema.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// recorder is a ServiceManager that records restarts.
type recorder struct {
	mu       sync.Mutex
	restarts []string
	fail     error
}

func (r *recorder) Restart(_ context.Context, unit string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.restarts = append(r.restarts, unit)
	return nil
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.restarts...)
}

// rebooter signals a channel instead of rebooting.
type rebooter chan struct{}

func (r rebooter) Reboot(context.Context) error {
	select {
	case r <- struct{}{}:
	default:
	}
	return nil
}

// testWriter sends the agent's log to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
