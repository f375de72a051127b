package controller_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"herd.dev/herd/sync/herdsource"
	"herd.dev/herd/test/fleettest"
)

// herdSource reads the HerdSource.
func (e *env) herdSource() *herdsource.HerdSource { return e.herdSourceNamed(herdsource.Name) }

func (e *env) herdSourceNamed(name string) *herdsource.HerdSource {
	var hs herdsource.HerdSource
	if err := e.c.Get(e.t.Context(), client.ObjectKey{Name: name}, &hs); err != nil {
		return nil
	}
	return &hs
}

// waitSource polls the HerdSource until cond holds.
func (e *env) waitSource(t *testing.T, what string, timeout time.Duration, cond func(*herdsource.HerdSource) bool) *herdsource.HerdSource {
	t.Helper()
	var last *herdsource.HerdSource
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		last = e.herdSource()
		return last != nil && cond(last), nil
	})
	if err != nil {
		t.Fatalf("waiting %s for %s: HerdSource is %+v", timeout, what, last)
	}
	return last
}

func kstatusOf(t *testing.T, hs *herdsource.HerdSource) status.Status {
	t.Helper()
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(hs)
	if err != nil {
		t.Fatal(err)
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: u})
	if err != nil {
		t.Fatal(err)
	}
	return res.Status
}

func readyIs(hs *herdsource.HerdSource, want bool, reason string) bool {
	c := conditions.Get(hs, meta.ReadyCondition)
	return c != nil && (c.Status == "True") == want && c.Reason == reason && c.ObservedGeneration >= 0
}

// gauge reads a metric of this process's controller registry.
func gauge(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestSourceInCluster: the HerdSource shows the fleet source. When the
// remote goes away, the first check after it reports Ready=False
// FetchFailed with a Warning event, the success timestamp stays put, and
// kstatus reads InProgress; when it is back, Ready=True again. A commit
// that fails validation is a Stalled rejection (kstatus Failed) naming the
// commit, until a good commit follows.
func TestSourceInCluster(t *testing.T) {
	e := newEnv(t)
	const interval = time.Second
	ctl := e.startControllerWith("source", false, func(c *controllerConfig) { c.Interval = interval })
	defer ctl.stop(t)
	head := strings.TrimSpace(fleettest.Git(t, e.work, "rev-parse", "HEAD"))

	hs := e.waitSource(t, "Ready", time.Minute, func(hs *herdsource.HerdSource) bool { return readyIs(hs, true, "Succeeded") })
	if hs.Status.LastAcceptedRevision == nil || hs.Status.LastAcceptedRevision.Commit != head || hs.Spec.URL != e.remote {
		t.Fatalf("HerdSource status %+v spec %+v, want accepted %s", hs.Status, hs.Spec, head)
	}
	if s := kstatusOf(t, hs); s != status.CurrentStatus {
		t.Fatalf("kstatus of a ready source: %s", s)
	}

	// The remote goes away.
	bare := strings.TrimPrefix(e.remote, "file://")
	if err := os.Rename(bare, bare+".moved"); err != nil {
		t.Fatal(err)
	}
	moved := time.Now()
	lastSuccess := gauge(t, "herd_source_last_success_timestamp_seconds")
	// Every check after the move fails: the first status written with a
	// fetch time after the move must already say FetchFailed. Two
	// intervals (plus jitter and scheduling) bound the wait.
	hs = e.waitSource(t, "a check after the remote moved", 2*interval+10*time.Second, func(hs *herdsource.HerdSource) bool {
		return hs.Status.LastFetchTime != nil && hs.Status.LastFetchTime.Time.After(moved.Truncate(time.Second).Add(time.Second))
	})
	if !readyIs(hs, false, "FetchFailed") {
		t.Fatalf("after the remote moved: conditions %+v", hs.Status.Conditions)
	}
	if s := kstatusOf(t, hs); s != status.InProgressStatus {
		t.Fatalf("kstatus of a failing fetch: %s, want InProgress (Flux's answer: retried every interval)", s)
	}
	if hs.Status.LastAcceptedRevision == nil || hs.Status.LastAcceptedRevision.Commit != head {
		t.Fatalf("the last good revision was dropped: %+v", hs.Status.LastAcceptedRevision)
	}
	if got := gauge(t, "herd_source_last_success_timestamp_seconds"); got != lastSuccess || got > float64(moved.Unix())+1 {
		t.Fatalf("herd_source_last_success_timestamp_seconds moved to %v while the remote was away (was %v)", got, lastSuccess)
	}
	e.waitEvent(t, "Warning", "FetchFailed")

	// Back again.
	if err := os.Rename(bare+".moved", bare); err != nil {
		t.Fatal(err)
	}
	e.waitSource(t, "Ready again", 2*interval+10*time.Second, func(hs *herdsource.HerdSource) bool { return readyIs(hs, true, "Succeeded") })
	if got := gauge(t, "herd_source_last_success_timestamp_seconds"); got <= lastSuccess {
		t.Fatalf("herd_source_last_success_timestamp_seconds did not move on recovery: %v", got)
	}

	// An invalid commit is rejected: Stalled, and the good revision stays.
	if err := os.WriteFile(e.work+"/pools/broken.cue", []byte("package fleet\n\npools: broken: maxUnavailable: \"lots\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fleettest.Git(t, e.work, "add", "-A")
	bad := e.push("a broken pool")
	hs = e.waitSource(t, "ValidationFailed", time.Minute, func(hs *herdsource.HerdSource) bool { return readyIs(hs, false, "ValidationFailed") })
	if hs.Status.LastRejected == nil || hs.Status.LastRejected.Commit != bad || hs.Status.LastAcceptedRevision.Commit != head {
		t.Fatalf("rejection %+v, accepted %+v", hs.Status.LastRejected, hs.Status.LastAcceptedRevision)
	}
	if s := kstatusOf(t, hs); s != status.FailedStatus {
		t.Fatalf("kstatus of a rejected head: %s, want Failed", s)
	}
	e.waitEvent(t, "Warning", "ValidationFailed")
}

// waitEvent waits for an event on the HerdSource.
func (e *env) waitEvent(t *testing.T, typ, reason string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var list eventsv1.EventList
		if err := e.c.List(ctx, &list); err != nil {
			return false, nil
		}
		for _, ev := range list.Items {
			if ev.Regarding.Kind == herdsource.Kind && ev.Type == typ && ev.Reason == reason {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no %s event %s on the HerdSource", typ, reason)
	}
}

// TestWebhookOnEveryReplica: two replicas, one leading. A GitHub push
// delivered to either one makes the leader fetch at once (the poll
// interval is an hour): the receiver records it on the HerdSource.
func TestWebhookOnEveryReplica(t *testing.T) {
	e := newEnv(t)
	const secret = "webhook-secret"
	addrs := []string{freeAddrT(t), freeAddrT(t)}
	for i, addr := range addrs {
		ctl := e.startControllerWith(fmt.Sprintf("replica-%d", i), true, func(c *controllerConfig) {
			c.Interval = time.Hour
			c.WebhookAddr = addr
			c.WebhookSecret = secret
		})
		defer ctl.stop(t)
	}
	head := strings.TrimSpace(fleettest.Git(t, e.work, "rev-parse", "HEAD"))
	e.waitSource(t, "the first revision", time.Minute, func(hs *herdsource.HerdSource) bool {
		return hs.Status.LastAcceptedRevision != nil && hs.Status.LastAcceptedRevision.Commit == head
	})
	for i, addr := range addrs {
		fleettest.Git(t, e.work, "commit", "--allow-empty", "-qm", fmt.Sprintf("delivery to replica %d", i))
		fleettest.Git(t, e.work, "push", "-q", "origin", "main")
		commit := strings.TrimSpace(fleettest.Git(t, e.work, "rev-parse", "HEAD"))
		githubPush(t, addr, secret, commit)
		e.waitSource(t, fmt.Sprintf("the commit delivered to replica %d", i), 30*time.Second, func(hs *herdsource.HerdSource) bool {
			return hs.Status.LastAcceptedRevision != nil && hs.Status.LastAcceptedRevision.Commit == commit
		})
	}
}

// githubPush delivers a signed GitHub push event for commit to the
// receiver at addr, waiting for it to listen; it must answer 202.
func githubPush(t *testing.T, addr, secret, commit string) {
	t.Helper()
	body := fmt.Sprintf(`{"ref":"refs/heads/main","after":%q}`, commit)
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader(body))
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-Hub-Signature-256", "sha256="+hmacSHA256(secret, body))
	var code int
	if err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		resp, err := http.DefaultClient.Do(req.Clone(t.Context()))
		if err != nil {
			return false, nil // not listening yet
		}
		resp.Body.Close()
		code = resp.StatusCode
		req.Body, _ = req.GetBody()
		return true, nil
	}); err != nil || code != http.StatusAccepted {
		t.Fatalf("%s answered %d (%v), want 202", addr, code, err)
	}
}

func freeAddrT(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func hmacSHA256(key, body string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(body))
	return hex.EncodeToString(m.Sum(nil))
}
