package logging_test

import (
	"bytes"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/runtime/logger"
	"github.com/google/go-cmp/cmp"

	"herd.dev/herd/node/logging"
)

// times are ISO 8601 timestamps; stacks are the stack traces of errors.
var (
	times  = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[-+Z][0-9:]*`)
	stacks = regexp.MustCompile(`"stacktrace":"[^"]*"|\n[a-zA-Z].*\n\t[^\n]*(\n[a-zA-Z].*\n\t[^\n]*)*`)
)

func normalize(s string) string {
	return stacks.ReplaceAllString(times.ReplaceAllString(s, "TIME"), "STACK")
}

// The agent's lines have the controller's shape: the same keys and level
// names in JSON, the same columns in console, stack traces of errors at the
// same levels. The controller's lines come from Flux's runtime logger, as
// cmd/herd's controller builds it.
func TestSameShapeAsController(t *testing.T) {
	for _, enc := range logging.Encodings {
		for _, level := range logging.Levels {
			t.Run(enc+"/"+level, func(t *testing.T) {
				var agent bytes.Buffer
				l, err := logging.New(&agent, logging.Options{Encoding: enc, Level: level})
				if err != nil {
					t.Fatal(err)
				}
				l.Info("state", "node", "n1", "attempt", 3, "in", 1500*time.Millisecond)
				l.Debug("debug line", "ok", true)
				l.Error("refusing the desired state", "reason", "bad", "error", errors.New("boom"))

				controller := captureStderr(t, func() {
					c := logger.NewLogger(logger.Options{LogEncoding: enc, LogLevel: level})
					c.Info("state", "node", "n1", "attempt", 3, "in", 1500*time.Millisecond)
					c.V(1).Info("debug line", "ok", true)
					c.Error(errors.New("boom"), "refusing the desired state", "reason", "bad")
				})
				got, want := normalize(agent.String()), normalize(controller)
				if d := cmp.Diff(want, got); d != "" {
					t.Errorf("agent lines differ from the controller's (-controller +agent):\n%s", d)
				}
				if !strings.Contains(got, "state") {
					t.Errorf("no info line:\n%s", got)
				}
			})
		}
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []logging.Options{{Encoding: "yaml"}, {Level: "warning"}, {Level: "INFO"}} {
		if _, err := logging.New(&bytes.Buffer{}, o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

// captureStderr returns what f writes to os.Stderr: controller-runtime's
// zap writes there.
func captureStderr(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	done := make(chan string)
	go func() {
		var b bytes.Buffer
		_, _ = b.ReadFrom(r)
		done <- b.String()
	}()
	f()
	os.Stderr = old
	w.Close()
	return <-done
}
