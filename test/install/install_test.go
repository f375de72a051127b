// Package install tests Herd's install as a user runs it: the README's
// install section against a real control plane, then the rendered
// controller and agent containers, with their exact arguments and
// environment, as a kubelet would start them (test/podrun).
package install

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	k8syaml "sigs.k8s.io/yaml"

	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/herdsource"
	"herd.dev/herd/test/controlplane"
	"herd.dev/herd/test/fleettest"
	"herd.dev/herd/test/gitserver"
	"herd.dev/herd/test/podrun"
)

func TestMain(m *testing.M) {
	if podrun.IsHelper() {
		podrun.HelperMain()
		return
	}
	ctrllog.SetLogger(logr.Discard()) // the test's own clients log nothing
	os.Exit(m.Run())
}

// testVersion is the version the test builds herd with: the install's
// image tags.
const testVersion = "v0.0.0-installtest"

// TestInstall runs the README's install section on a real control plane,
// applies `herd install --print` with kubectl server-side apply (every
// object accepted, nothing conflicting), starts both controller replicas
// and the agent from the Pods the cluster made of the rendered workloads,
// and checks: probes pass, one replica leads and reconciles the example
// fleet, every replica takes webhook deliveries, both serve metrics, the
// agent starts on a simulated node and reports on it.
func TestInstall(t *testing.T) {
	cp := controlplane.StartTest(t, controlplane.Options{})
	root := fleettest.RepoRoot(t)
	bins := buildBinaries(t, root)
	work := t.TempDir()

	// A fleet repo from the example, served by git daemon.
	fleet := filepath.Join(work, "fleet")
	fleettest.NewRepo(t, fleet)
	// Every commit signed by the key the README trusts.
	key := gitserver.NewSSHKey(t, "fleet admin")
	signers := filepath.Join(work, "allowed_signers")
	if err := os.WriteFile(signers, []byte(key.AllowedSignersLine("admin@example.com")), 0o644); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"gpg.format": "ssh", "user.signingkey": key.PrivatePath, "commit.gpgsign": "true"} {
		fleettest.Git(t, fleet, "config", k, v)
	}
	fleettest.Git(t, fleet, "commit", "-q", "--amend", "--no-edit")
	head := fleettest.Git(t, fleet, "rev-parse", "HEAD")
	served := filepath.Join(work, "git")
	bare := filepath.Join(served, "fleet.git")
	fleettest.Git(t, work, "clone", "-q", "--bare", fleet, bare)
	daemon := gitserver.StartDaemon(t, served)
	remote := daemon.URL("fleet.git")

	// The README's install section, block by block.
	blocks := readmeBlocks(t, filepath.Join(root, "README.md"), "Install")
	if len(blocks) != 2 {
		t.Fatalf("README's Install section has %d sh blocks, want 2 (install, check)", len(blocks))
	}
	env := append(os.Environ(),
		"PATH="+filepath.Dir(bins["herd"])+":"+filepath.Dir(cp.KubectlPath())+":"+os.Getenv("PATH"),
		"KUBECONFIG="+cp.KubeconfigPath(),
		"FLEET_REPO="+remote,
		"CLUSTER=install-test",
		"FLEET_SIGNERS="+signers,
	)
	shell(t, work, env, blocks[0])

	c := newClient(t, cp)
	cs := kubernetes.NewForConfigOrDie(cp.Config())
	ctx := t.Context()

	t.Run("server-side apply of --print", func(t *testing.T) {
		printed := filepath.Join(work, "herd.yaml")
		shell(t, work, env, `herd install --print --repo "$FLEET_REPO" --cluster "$CLUSTER" > `+printed+`
kubectl apply --server-side --field-manager=herd-install-test -f `+printed)
		checkEveryObject(t, c, printed)
	})

	// The workloads as installed.
	var deploy appsv1.Deployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: "herd-system", Name: "herd-controller"}, &deploy); err != nil {
		t.Fatal(err)
	}
	if img := deploy.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/herd-dev/herd:"+testVersion {
		t.Fatalf("controller image %s, want the binary's version %s", img, testVersion)
	}
	var ds appsv1.DaemonSet
	if err := c.Get(ctx, client.ObjectKey{Namespace: "herd-system", Name: "herd-agent"}, &ds); err != nil {
		t.Fatal(err)
	}
	if img := ds.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/herd-dev/herd-agent:"+testVersion {
		t.Fatalf("agent image %s", img)
	}

	// The Pods kube-controller-manager made of them: the controller's two
	// replicas (the ReplicaSet controller) and, once a node exists, the
	// agent's (the DaemonSet controller).
	pods := waitPods(t, cs, "app.kubernetes.io/component=controller", 2)
	entry := map[string]string{"ghcr.io/herd-dev/herd": bins["herd"], "ghcr.io/herd-dev/herd-agent": bins["herd-agent"]}
	var replicas []*podrun.Process
	for i := range pods {
		p := startPod(t, cp, &pods[i], "controller", entry, nil, hostPort(remote))
		replicas = append(replicas, p)
	}
	for i, p := range replicas {
		waitProbes(t, p, deploy.Spec.Template.Spec.Containers[0], fmt.Sprintf("controller replica %d", i))
	}

	// One leads, and reconciles the example fleet.
	lease := waitLeader(t, cs)
	t.Logf("leader: %s", lease)
	shell(t, work, env, blocks[1])
	waitPools(t, c, head, fleettest.Load(t, fleet).PoolNames())

	// Every replica takes deliveries; the leader fetches each one.
	secret, err := os.ReadFile(filepath.Join(work, "webhook-secret"))
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range replicas {
		fleettest.Git(t, fleet, "commit", "--allow-empty", "-qm", fmt.Sprintf("delivered to replica %d", i))
		fleettest.Git(t, fleet, "push", "-q", bare, "main")
		commit := fleettest.Git(t, fleet, "rev-parse", "HEAD")
		deliver(t, p, strings.TrimSpace(string(secret)), commit)
		waitAccepted(t, c, commit)
	}

	// Metrics on every replica; the leader's show the source and the pools.
	leaders := 0
	for i, p := range replicas {
		m := scrape(t, p, p.Port("metrics"))
		if !strings.Contains(m, "go_goroutines") {
			t.Errorf("replica %d's /metrics has no process metrics", i)
		}
		if gaugeSet(m, "herd_source_last_success_timestamp_seconds") {
			leaders++
			for _, name := range []string{"gotk_reconcile_condition", "herd_source_ready", "herd_nodes"} {
				if !strings.Contains(m, name) {
					t.Errorf("the leader's /metrics has no %s", name)
				}
			}
		}
	}
	if leaders != 1 {
		t.Errorf("%d replicas report the source, want the leader alone", leaders)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		out, err := exec.Command(cp.KubectlPath(), "--kubeconfig", cp.KubeconfigPath(), "get", "herdsource", "fleet", "-o", "jsonpath={.status.lastAppliedRevision}").Output()
		return err == nil && strings.TrimSpace(string(out)) != "", nil
	}); err != nil {
		t.Error("the HerdSource never showed the applied revision")
	}

	t.Run("agent", func(t *testing.T) { runAgent(t, cp, c, cs, &ds, entry, work) })

	for i, p := range replicas {
		if err := p.Stop(30 * time.Second); err != nil {
			t.Errorf("controller replica %d: %v", i, err)
		}
	}
	single := strings.Fields(lease)[0] // the single controller's Lease
	t.Run("shards", func(t *testing.T) {
		runShards(t, cp, c, cs, work, env, entry, remote, fleettest.Git(t, fleet, "rev-parse", "HEAD"), single)
	})
}

// runShards installs two controller shards in place of the single
// controller and runs one replica of each from its rendered Pod: each
// leads its own election and keeps its own HerdSource at the head. An
// install without shards then puts the single controller back.
func runShards(t *testing.T, cp *controlplane.ControlPlane, c client.Client, cs kubernetes.Interface, work string, env []string, entry map[string]string, remote, head, single string) {
	out := shell(t, work, env, `herd install --repo "$FLEET_REPO" --cluster "$CLUSTER" --shard a=herd.dev/shard=a --shard 'main=!herd.dev/shard'`)
	for _, gone := range []string{"deployment/herd-controller", "poddisruptionbudget/herd-controller"} {
		if !strings.Contains(out, "deleted "+gone+":") {
			t.Errorf("herd install --shard did not delete the single controller's %s:\n%s", gone, out)
		}
	}
	var shards []*podrun.Process
	for _, name := range []string{"a", "main"} {
		var d appsv1.Deployment
		if err := c.Get(t.Context(), client.ObjectKey{Namespace: "herd-system", Name: "herd-controller-" + name}, &d); err != nil {
			t.Fatal(err)
		}
		pods := waitPods(t, cs, "herd.dev/shard-name="+name, 2)
		p := startPod(t, cp, &pods[0], "controller", entry, nil, hostPort(remote))
		waitProbes(t, p, d.Spec.Template.Spec.Containers[0], "shard "+name)
		shards = append(shards, p)
	}
	for _, name := range []string{"fleet-a", "fleet-main"} {
		waitAcceptedBy(t, c, name, strings.TrimSpace(head))
	}
	held := map[string]string{}
	if err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.CoordinationV1().Leases("herd-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		clear(held)
		for _, l := range list.Items {
			if isHerd(l) && l.Name != single && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
				held[l.Name] = *l.Spec.HolderIdentity
			}
		}
		return len(held) == 2, nil
	}); err != nil {
		t.Errorf("leader Leases held by shard pods: %v, want one per shard", held)
	}
	for i, p := range shards {
		if err := p.Stop(30 * time.Second); err != nil {
			t.Errorf("shard %d: %v", i, err)
		}
	}

	out = shell(t, work, env, `herd install --repo "$FLEET_REPO" --cluster "$CLUSTER"`)
	for _, gone := range []string{"deployment/herd-controller-a", "deployment/herd-controller-main"} {
		if !strings.Contains(out, "deleted "+gone+":") {
			t.Errorf("herd install without shards did not delete %s:\n%s", gone, out)
		}
	}
}

// runAgent starts the agent of a simulated node from the DaemonSet's Pod.
func runAgent(t *testing.T, cp *controlplane.ControlPlane, c client.Client, cs kubernetes.Interface, ds *appsv1.DaemonSet, entry map[string]string, work string) {
	if entry["ghcr.io/herd-dev/herd-agent"] == "" {
		t.Fatal("no herd-agent binary was built: the agent's container cannot run")
	}
	node := simulatedNode(t, c)
	host := filepath.Join(work, "node-root")
	newSysroot(t, host)
	// The host's boot ID, which the agent's repairs tell boots apart by.
	bootID := filepath.Join(host, "proc/sys/kernel/random/boot_id")
	if err := os.MkdirAll(filepath.Dir(bootID), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bootID, []byte("00000000-0000-4000-8000-000000000001\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dbus := filepath.Join(work, "node-dbus")
	if err := os.MkdirAll(dbus, 0o755); err != nil {
		t.Fatal(err)
	}
	pods := waitPods(t, cs, "app.kubernetes.io/component=agent", 1)
	// The DaemonSet controller pins its Pod to the node by affinity; with
	// no scheduler here, bind it as the scheduler would.
	if pods[0].Spec.NodeName == "" {
		if err := cs.CoreV1().Pods(pods[0].Namespace).Bind(t.Context(), &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: pods[0].Name, Namespace: pods[0].Namespace, UID: pods[0].UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: node},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pods = waitPods(t, cs, "app.kubernetes.io/component=agent", 1)
	}
	if pods[0].Spec.NodeName != node {
		t.Fatalf("agent pod on %q, want %s", pods[0].Spec.NodeName, node)
	}
	p := startPod(t, cp, &pods[0], "agent", entry, map[string]string{"/": host, "/run/dbus": dbus})
	waitProbes(t, p, ds.Spec.Template.Spec.Containers[0], "agent")
	m := scrape(t, p, p.Port("metrics"))
	for _, name := range monitoringNames(t, "herd_agent_") {
		if !strings.Contains(m, name) {
			t.Errorf("the agent's /metrics has no %s, which config/monitoring uses", name)
		}
	}
	// It reports on its own Node, and its health side publishes Herd's
	// conditions there, through the admission policy: its token is bound
	// to its Pod on that node.
	if err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var n corev1.Node
		if err := c.Get(ctx, client.ObjectKey{Name: node}, &n); err != nil {
			return false, nil
		}
		return n.Annotations["herd.dev/state"] != "" && slices.ContainsFunc(n.Status.Conditions, func(c corev1.NodeCondition) bool {
			return c.Type == corev1.NodeConditionType(schema.ConditionDiskPressure)
		}), nil
	}); err != nil {
		t.Fatal("the agent never reported herd.dev/state and its health conditions on its Node")
	}
	if err := p.Stop(30 * time.Second); err != nil {
		t.Error(err)
	}
}

// buildBinaries builds herd (at testVersion) and, when the tree has it,
// herd-agent, static as `make build` does.
func buildBinaries(t *testing.T, root string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	out := map[string]string{}
	for _, name := range []string{"herd", "herd-agent"} {
		if _, err := os.Stat(filepath.Join(root, "cmd", name)); err != nil {
			continue
		}
		bin := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version="+testVersion, "./cmd/"+name)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, b)
		}
		out[name] = bin
	}
	return out
}

// readmeBlocks returns the ```sh blocks of a README section.
func readmeBlocks(t *testing.T, path, section string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	in, inBlock := false, false
	var cur strings.Builder
	for line := range strings.SplitSeq(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "## "):
			in = strings.TrimPrefix(line, "## ") == section
		case in && line == "```sh":
			inBlock = true
			cur.Reset()
		case in && inBlock && line == "```":
			inBlock = false
			blocks = append(blocks, cur.String())
		case inBlock:
			cur.WriteString(line + "\n")
		}
	}
	return blocks
}

// shell runs a script with bash -euo pipefail.
func shell(t *testing.T, dir string, env []string, script string) string {
	t.Helper()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s\n%v\n%s", script, err, out)
	}
	t.Logf("$ %s%s", script, out)
	return string(out)
}

func newClient(t *testing.T, cp *controlplane.ControlPlane) client.Client {
	t.Helper()
	c, err := client.New(cp.Config(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkEveryObject gets back every object of a manifest stream.
func checkEveryObject(t *testing.T, c client.Client, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for doc := range strings.SplitSeq(string(b), "\n---\n") {
		if strings.TrimSpace(doc) == "" || strings.TrimSpace(doc) == "---" {
			continue
		}
		var u unstructured.Unstructured
		if err := k8syaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("parse %s: %v", doc, err)
		}
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(u.GroupVersionKind())
		if err := c.Get(t.Context(), client.ObjectKey{Namespace: u.GetNamespace(), Name: u.GetName()}, got); err != nil {
			t.Errorf("%s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
		n++
	}
	t.Logf("%d objects applied and read back", n)
	if n < 15 {
		t.Fatalf("only %d objects in the manifests", n)
	}
}

// waitPods waits for n Pods of Herd's with the label selector.
func waitPods(t *testing.T, cs kubernetes.Interface, selector string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.CoreV1().Pods("herd-system").List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		pods = list.Items
		return len(pods) == n, nil
	})
	if err != nil {
		t.Fatalf("want %d pods %s, have %d", n, selector, len(pods))
	}
	slices.SortFunc(pods, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return pods
}

// startPod runs a Pod's container; the test stops it or, failing, logs it.
func startPod(t *testing.T, cp *controlplane.ControlPlane, pod *corev1.Pod, container string, entry, hostPaths map[string]string, forward ...string) *podrun.Process {
	t.Helper()
	out := &logBuffer{}
	p, err := podrun.Start(t.Context(), podrun.Options{
		Rest:        cp.Config(),
		APIServer:   strings.TrimPrefix(cp.ServerURL(), "https://"),
		CA:          cp.CAData(),
		Pod:         pod,
		Container:   container,
		Entrypoints: entry,
		HostPaths:   hostPaths,
		Dir:         filepath.Join(t.TempDir(), pod.Name),
		Helper:      os.Args[0],
		Forward:     forward,
		Output:      out,
	})
	if err != nil {
		t.Fatalf("start %s/%s: %v", pod.Name, container, err)
	}
	t.Cleanup(func() {
		if done, _ := p.Exited(); !done {
			_ = p.Stop(10 * time.Second)
		}
		if t.Failed() {
			t.Logf("%s/%s output:\n%s", pod.Name, container, out.tail(60))
		}
	})
	return p
}

// waitProbes waits until the container's readiness and liveness probes pass.
func waitProbes(t *testing.T, p *podrun.Process, c corev1.Container, what string) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, 2*time.Minute, true, func(context.Context) (bool, error) {
		if done, err := p.Exited(); done {
			return false, fmt.Errorf("%s exited: %v", what, err)
		}
		if last = p.Probe(c.ReadinessProbe); last != nil {
			return false, nil
		}
		last = p.Probe(c.LivenessProbe)
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("%s: probes: %v (last: %v)", what, err, last)
	}
}

// waitLeader waits until a controller replica holds the leader lease.
func waitLeader(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	holder := ""
	err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.CoordinationV1().Leases("herd-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, l := range list.Items {
			if isHerd(l) && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
				holder = l.Name + " held by " + *l.Spec.HolderIdentity
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatal("no controller replica became leader")
	}
	return holder
}

func isHerd(l coordinationv1.Lease) bool { return strings.HasPrefix(l.Name, "herd-controller") }

// waitPools waits for a HerdPool per pool of the fleet at revision head.
func waitPools(t *testing.T, c client.Client, head string, names []string) {
	t.Helper()
	var got []string
	err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var list herdPoolList
		if err := c.List(ctx, list.u()); err != nil {
			return false, nil
		}
		got = list.names(head)
		return slices.Equal(got, names), nil
	})
	if err != nil {
		t.Fatalf("HerdPools at %s: %v, want %v", head, got, names)
	}
}

// herdPoolList reads HerdPools without the controller's scheme.
type herdPoolList struct {
	list *unstructured.UnstructuredList
}

func (l *herdPoolList) u() *unstructured.UnstructuredList {
	l.list = &unstructured.UnstructuredList{}
	l.list.SetAPIVersion(herdpool.GroupVersion.String())
	l.list.SetKind(herdpool.Kind + "List")
	return l.list
}

func (l *herdPoolList) names(rev string) []string {
	var out []string
	for _, it := range l.list.Items {
		if r, _, _ := unstructured.NestedString(it.Object, "status", "observedRevision"); r == rev {
			out = append(out, it.GetName())
		}
	}
	slices.Sort(out)
	return out
}

// deliver posts a GitHub push of commit to a replica's webhook port.
func deliver(t *testing.T, p *podrun.Process, secret, commit string) {
	t.Helper()
	body := fmt.Sprintf(`{"ref":"refs/heads/main","after":%q}`, commit)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(body))
	req, _ := http.NewRequest(http.MethodPost, "http://pod/", strings.NewReader(body))
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(m.Sum(nil)))
	resp, err := p.Client(p.Port("webhook")).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("webhook answered %s: %s", resp.Status, b)
	}
}

// waitAccepted waits until the HerdSource shows commit accepted.
func waitAccepted(t *testing.T, c client.Client, commit string) {
	t.Helper()
	waitAcceptedBy(t, c, herdsource.Name, commit)
}

// waitAcceptedBy waits for the HerdSource name to accept commit.
func waitAcceptedBy(t *testing.T, c client.Client, name, commit string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion(herdpool.GroupVersion.String())
		u.SetKind(herdsource.Kind)
		if err := c.Get(ctx, client.ObjectKey{Name: name}, u); err != nil {
			return false, nil
		}
		got, _, _ := unstructured.NestedString(u.Object, "status", "lastAcceptedRevision", "commit")
		return got == commit, nil
	})
	if err != nil {
		t.Fatalf("HerdSource %s did not fetch %s", name, commit)
	}
}

// gaugeSet reports whether an unlabelled metric is there and not zero.
func gaugeSet(metrics, name string) bool {
	for line := range strings.SplitSeq(metrics, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v != "0"
		}
	}
	return false
}

// scrape reads /metrics from a container port.
func scrape(t *testing.T, p *podrun.Process, port int) string {
	t.Helper()
	resp, err := p.Client(port).Get("http://pod/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s %v", resp.Status, err)
	}
	return string(b)
}

var metricName = regexp.MustCompile(`\b(herd_[a-z_]+|gotk_[a-z_]+)\b`)

// monitoringNames lists the metric names with prefix that the dashboards
// and alert rules of config/monitoring use.
func monitoringNames(t *testing.T, prefix string) []string {
	t.Helper()
	root := fleettest.RepoRoot(t)
	seen := map[string]bool{}
	for _, f := range []string{"config/monitoring/alerts.yaml", "config/monitoring/dashboards/herd.json"} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range metricName.FindAllString(string(b), -1) {
			m = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
			if strings.HasPrefix(m, prefix) {
				seen[m] = true
			}
		}
	}
	var out []string
	for m := range seen {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// simulatedNode registers a Node, as a kubelet would, and returns its name.
func simulatedNode(t *testing.T, c client.Client) string {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{"kubernetes.io/hostname": "node-1"}}}
	if err := c.Create(t.Context(), n); err != nil {
		t.Fatal(err)
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(), Reason: "KubeletReady"}}
	if err := c.Status().Update(t.Context(), n); err != nil {
		t.Fatal(err)
	}
	return n.Name
}

// newSysroot makes host an OSTree sysroot with a booted deployment: the
// simulated node's root.
func newSysroot(t *testing.T, host string) {
	t.Helper()
	repo, err := osfixture.NewRepo(t.Context(), filepath.Join(t.TempDir(), "os"), osfixture.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = repo.Close() })
	if _, err := repo.NewSysroot(t.Context(), host, osfixture.SysrootOptions{}); err != nil {
		t.Fatal(err)
	}
}

// hostPort is the host:port of a git:// URL.
func hostPort(url string) string {
	rest := strings.TrimPrefix(url, "git://")
	host, _, _ := strings.Cut(rest, "/")
	return host
}

// logBuffer keeps a process's output.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
