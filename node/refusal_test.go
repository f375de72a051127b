package node_test

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/node"
	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
)

// Every refusal leaves the node Degraded with a message naming the problem,
// writes no file, and is not retried until the desired state changes.
func TestAgentRefuses(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 1, Sign: true})
	signed := repo.Commits[0]
	unsigned, err := repo.AddCommit(t.Context(), false)
	if err != nil {
		t.Fatal(err)
	}
	missing := sha256.Sum256([]byte("no such commit"))
	good := spec{commit: signed, sysctl: map[string]string{"vm.max_map_count": "262144"},
		files: []schema.File{{Path: limitsFile, Content: "x\n", Mode: 0o644}}}

	for _, tc := range []struct {
		name string
		// publish stores the rendered ConfigMap and returns desired-config, desired-os.
		publish func(t *testing.T, n *testNode) (string, string)
		want    string
	}{{
		name: "hash mismatch",
		publish: func(t *testing.T, n *testNode) (string, string) {
			r := render(t, repo, good)
			other := render(t, repo, spec{commit: signed, maxPods: 7})
			data, _ := schema.MarshalRendered(r)
			publishRaw(t, n.cs, other.Hash(), string(data)) // the name says one config, the content is another
			return other.Hash(), signed
		},
		want: "hashes to " + render(t, repo, good).Hash(),
	}, {
		name: "file outside the allowlist",
		publish: func(t *testing.T, n *testNode) (string, string) {
			r := render(t, repo, good)
			r.Files = append(r.Files, schema.RenderedFile{Path: "/etc/passwd", Mode: 0o644, Content: "root::0:0::/:/bin/sh\n"})
			return publishRender(t, n.cs, r), signed
		},
		want: "writes /etc/passwd, outside the file allowlist",
	}, {
		name: "unknown sysctl",
		publish: func(t *testing.T, n *testNode) (string, string) {
			s := good
			s.sysctl = map[string]string{"vm.max_map_count": "262144", "vm.no_such_knob": "1"}
			return publishRender(t, n.cs, render(t, repo, s)), signed
		},
		want: "unknown sysctl vm.no_such_knob",
	}, {
		name: "denied sysctl",
		publish: func(t *testing.T, n *testNode) (string, string) {
			s := good
			s.sysctl = map[string]string{"kernel.core_pattern": "|/bin/sh -c reboot"}
			n.writeRootFile("proc/sys/kernel/core_pattern", "core\n")
			return publishRender(t, n.cs, render(t, repo, s)), signed
		},
		want: "invalid or denied sysctl kernel.core_pattern",
	}, {
		name: "kernel argument running a program",
		publish: func(t *testing.T, n *testNode) (string, string) {
			s := good
			s.kargs = []string{"console=ttyS0", "systemd.run=/usr/bin/curl"}
			return publishRender(t, n.cs, render(t, repo, s)), signed
		},
		want: `kernel argument "systemd.run=/usr/bin/curl" is denied`,
	}, {
		name: "missing commit",
		publish: func(t *testing.T, n *testNode) (string, string) {
			s := good
			s.commit = hex.EncodeToString(missing[:])
			return publishRender(t, n.cs, render(t, repo, s)), s.commit
		},
		want: "commit not found",
	}, {
		name: "unsigned commit",
		publish: func(t *testing.T, n *testNode) (string, string) {
			s := good
			s.commit = unsigned
			s.remote = &schema.RemoteConfig{Name: "signed", URL: repo.URL, GPGVerify: true}
			return publishRender(t, n.cs, render(t, repo, s)), unsigned
		},
		want: "commit verification failed",
	}, {
		name: "desired-os disagrees with the render",
		publish: func(t *testing.T, n *testNode) (string, string) {
			return publishRender(t, n.cs, render(t, repo, good)), unsigned
		},
		want: "is not the OS commit",
	}, {
		name: "no rendered key",
		publish: func(t *testing.T, n *testNode) (string, string) {
			h := render(t, repo, spec{commit: signed, maxPods: 9}).Hash()
			_, err := n.cs.CoreV1().ConfigMaps(schema.RenderedNamespace).Create(t.Context(), &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: schema.RenderedName(h)},
				Data:       map[string]string{"other.json": "{}"},
			}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
			return h, signed
		},
		want: "has no key " + schema.RenderedDataKey,
	}} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			n := newTestNode(t, repo, osfixture.SysrootOptions{})
			keys := filepath.Join(n.root, "etc/herd/trusted.gpg.d")
			n.writeRootFile("etc/herd/trusted.gpg.d/signed.asc", string(mustRead(t, repo.KeyPath)))
			config, commit := tc.publish(t, n)
			n.setDesired(config, commit)
			n.startWith(func(o *node.Options, _ func()) { o.TrustedKeysDir = keys })
			ann := n.waitState(schema.StateDegraded, 30*time.Second)
			msg := ann[schema.AnnotationMessage]
			t.Logf("message: %s", msg)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not contain %q", msg, tc.want)
			}
			if ann[schema.AnnotationOSBooted] != signed || ann[schema.AnnotationCurrentConfig] != "" {
				t.Errorf("annotations %v", ann)
			}
			if got := n.readRootFile(strings.TrimPrefix(limitsFile, "/")); got != "" {
				t.Errorf("a refused config wrote %s", limitsFile)
			}
			if got := n.readRootFile("proc/sys/vm/max_map_count"); got != knownSysctls["vm.max_map_count"]+"\n" {
				t.Errorf("a refused config set vm.max_map_count = %q", got)
			}
			n.noRebootRequested()

			// No hot loop: other changes to the Node, and a restart of the
			// agent, do not retry.
			setAnnotations(t, n.cs, n.name, map[string]any{"example.com/unrelated": "1"})
			n.stop()
			n.startWith(func(o *node.Options, _ func()) { o.TrustedKeysDir = keys })
			setAnnotations(t, n.cs, n.name, map[string]any{"example.com/unrelated": "2"})
			n.waitState(schema.StateDegraded, 10*time.Second)
			if c := n.metrics.Snapshot(); c.Refusals != 1 || c.Pulls != 0 || c.Files != 0 {
				t.Errorf("counters %+v: want 1 refusal and nothing else", c)
			}

			// A new desired state is tried.
			h := publishRender(t, n.cs, render(t, repo, good))
			n.setDesired(h, signed)
			n.waitUpToDate(h, signed)
		})
	}
}

// A node that rebooted but came back on the old deployment is Degraded.
func TestAgentDetectsFallback(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 2})
	v1, v2 := repo.Commits[0], repo.Commits[1]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	h := publishRender(t, n.cs, render(t, repo, spec{commit: v2, maxPods: 10}))
	n.setDesired(h, v2)
	n.start(nil)
	n.awaitReboot()
	n.rebootNow(false) // the boot ID changes, v1 still runs
	ann := n.waitState(schema.StateDegraded, 30*time.Second)
	msg := ann[schema.AnnotationMessage]
	if !strings.Contains(msg, "fell back") || ann[schema.AnnotationOSBooted] != v1 {
		t.Errorf("annotations %v: want Degraded, fell back, os-booted v1", ann)
	}
	n.noRebootRequested()
	n.stop()
	n.start(nil) // the verdict stands across restarts, without another reboot
	n.waitState(schema.StateDegraded, 10*time.Second)
	n.noRebootRequested()
	if c := n.metrics.Snapshot(); c.Reboots != 1 || c.Refusals != 1 {
		t.Errorf("counters %+v", c)
	}
}

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A rendered ConfigMap that is not there (yet) is retried with backoff, not
// refused: once it appears, the node converges.
func TestAgentRetriesMissingConfigMap(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 1})
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	r := render(t, repo, spec{commit: repo.Commits[0], sysctl: map[string]string{"vm.max_map_count": "262144"}})
	n.setDesired(r.Hash(), repo.Commits[0])
	n.start(nil)
	var ann map[string]string
	if !poll(t, 30*time.Second, func() bool {
		ann = n.annotations()
		return strings.Contains(ann[schema.AnnotationMessage], "not found") && strings.Contains(ann[schema.AnnotationMessage], "retrying in")
	}) {
		t.Fatalf("no retry reported: %v", ann)
	}
	if ann[schema.AnnotationState] != string(schema.StateWorking) {
		t.Errorf("state %s after the first failure, want Working", ann[schema.AnnotationState])
	}
	publishRender(t, n.cs, r)
	n.waitUpToDate(r.Hash(), repo.Commits[0])
	if c := n.metrics.Snapshot(); c.Refusals != 0 || c.Applied != 1 {
		t.Errorf("counters %+v", c)
	}
}
