package gitutil

import (
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	for raw, want := range map[string]string{
		"https://alice:s3cret@git.example.com/fleet.git":         "https://redacted@git.example.com/fleet.git",
		"https://ghp_0123456789abcdef@git.example.com/fleet.git": "https://redacted@git.example.com/fleet.git",
		"https://git.example.com/fleet.git?private_token=abc":    "https://git.example.com/fleet.git?private_token=redacted",
		"ssh://git:pw@git.example.com/fleet.git":                 "ssh://git@git.example.com/fleet.git",
		"ssh://git@git.example.com:2222/fleet.git":               "ssh://git@git.example.com:2222/fleet.git",
		"git@git.example.com:org/fleet.git":                      "git@git.example.com:org/fleet.git",
		"file:///srv/fleet.git":                                  "file:///srv/fleet.git",
		"http://127.0.0.1:8080/fleet.git":                        "http://127.0.0.1:8080/fleet.git",
	} {
		if got := RedactURL(raw); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", raw, got, want)
		}
	}
	raw := "https://x-access-token:ghs_supersecret@git.example.com/fleet.git"
	msg := `Get "https://x-access-token:***@git.example.com/fleet.git/info/refs": dial tcp: refused; token ghs_supersecret; url ` + raw
	if got := Scrub(msg, raw); strings.Contains(got, "ghs_supersecret") || strings.Contains(got, "x-access-token:") {
		t.Errorf("Scrub left a credential: %q", got)
	}
}
