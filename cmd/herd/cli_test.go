package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"herd.dev/herd/sync/statusview"
)

// TestVersionOutput: -o json and -o yaml are for programs.
func TestVersionOutput(t *testing.T) {
	for _, format := range []string{"json", "yaml"} {
		code, out, errOut := herd(t, "", "version", "-o", format)
		if code != 0 || errOut != "" {
			t.Fatalf("%s: exit %d, stderr %s", format, code, errOut)
		}
		var v versionInfo
		if err := yaml.Unmarshal([]byte(out), &v); err != nil || v.Version == "" || v.RenderVersion == 0 || v.GoVersion == "" {
			t.Fatalf("%s: %q: %v", format, out, err)
		}
	}
	if code, out, _ := herd(t, "", "version"); code != 0 || !strings.HasPrefix(out, "herd ") {
		t.Fatalf("text: exit %d, %q", code, out)
	}
	if code, _, _ := herd(t, "", "version", "-o", "xml"); code != 2 {
		t.Fatalf("-o xml: exit %d, want 2", code)
	}
}

// TestStatusWatchPiped: --watch into a pipe prints each new state after a
// blank line, with no terminal escapes, and nothing for a state that did
// not change.
func TestStatusWatchPiped(t *testing.T) {
	states := []statusView{
		{Pools: []statusview.Line{{Pool: "general", Phase: "Progressing", UpToDate: 1, Nodes: 3}}},
		{Pools: []statusview.Line{{Pool: "general", Phase: "Progressing", UpToDate: 1, Nodes: 3}}},
		{Pools: []statusview.Line{{Pool: "general", Phase: "UpToDate", UpToDate: 3, Nodes: 3}}},
	}
	for _, format := range []string{"text", "json"} {
		ctx, cancel := context.WithCancel(t.Context())
		events := make(chan struct{}, len(states))
		i := 0
		read := func() (statusView, error) {
			v := states[min(i, len(states)-1)]
			i++
			if i == len(states) {
				cancel()
			} else {
				events <- struct{}{}
			}
			return v, nil
		}
		var buf bytes.Buffer
		out := &outputFlag{format: format}
		if err := showStatus(ctx, &buf, out, true, read, func() (<-chan struct{}, error) { return events, nil }); err != nil {
			t.Fatal(err)
		}
		got := buf.String()
		if strings.Contains(got, "\033") {
			t.Fatalf("%s: terminal escapes in piped output: %q", format, got)
		}
		if n := strings.Count(got, "general"); n != 2 {
			t.Fatalf("%s: %d states printed, want 2 (the unchanged one skipped):\n%s", format, n, got)
		}
		if format == "json" {
			dec := json.NewDecoder(strings.NewReader(got))
			for range 2 {
				var v statusView
				if err := dec.Decode(&v); err != nil {
					t.Fatalf("json stream: %v\n%s", err, got)
				}
			}
		}
	}
}

// TestStyledRespectsNoColor: escapes only on a terminal, without NO_COLOR,
// and not for TERM=dumb.
func TestStyledRespectsNoColor(t *testing.T) {
	if styled(&bytes.Buffer{}) {
		t.Fatal("a buffer is not a terminal")
	}
	for _, c := range []struct {
		terminal      bool
		noColor, term string
		want          bool
	}{
		{true, "", "xterm", true},
		{true, "1", "xterm", false},
		{true, "", "dumb", false},
		{false, "", "xterm", false},
	} {
		if got := wantsStyle(c.terminal, c.noColor, c.term); got != c.want {
			t.Errorf("%+v: %v", c, got)
		}
	}
}

// TestStatusGitPollFloor: --watch --from-git polls no more often than 10s.
func TestStatusGitPollFloor(t *testing.T) {
	code, _, errOut := herd(t, "", "status", "--from-git", t.TempDir(), "--watch", "--interval", "1s")
	if code != 2 || !strings.Contains(errOut, "10s") {
		t.Fatalf("exit %d, stderr %q; want a usage error naming the 10s floor", code, errOut)
	}
}

// TestInstallPrint: the manifests carry the repo, the cluster and the
// images at the given version, and refuse credentials in the URL.
func TestInstallPrint(t *testing.T) {
	code, out, errOut := herd(t, "", "install", "--print", "--repo", "https://git.example.com/fleet.git", "--cluster", "prod", "--version", "v1.2.3")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"--repo=https://git.example.com/fleet.git", "--cluster=prod", "image: ghcr.io/herd-dev/herd:v1.2.3", "image: ghcr.io/herd-dev/herd-agent:v1.2.3", "--enable-leader-election", "kind: PodDisruptionBudget", "pod-security.kubernetes.io/enforce: privileged"} {
		if !strings.Contains(out, want) {
			t.Errorf("manifests lack %q", want)
		}
	}
	if strings.Contains(out, "--leader-elect\n") {
		t.Error("--leader-elect is not a flag of herd controller")
	}
	code, _, errOut = herd(t, "", "install", "--print", "--repo", "https://user:token@git.example.com/fleet.git", "--cluster", "prod")
	if code != 1 || !strings.Contains(errOut, "credentials") || strings.Contains(errOut, "token@") {
		t.Fatalf("credentials in the URL: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ := herd(t, "", "install", "--print", "--cluster", "prod"); code != 2 {
		t.Fatalf("--cluster without --repo: exit %d, want 2", code)
	}
	// Neither: everything but the controller.
	code, out, errOut = herd(t, "", "install", "--print")
	if code != 0 || !strings.Contains(out, "name: herd-agent") || strings.Contains(out, "name: herd-controller\n  namespace: herd-system\nspec:\n  replicas") || strings.Contains(out, "kind: Deployment") || strings.Contains(out, "kind: PodDisruptionBudget") {
		t.Fatalf("install without a repo: exit %d, %s\n%s", code, errOut, out)
	}
}
