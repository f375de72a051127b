package ostree

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnquoteGVariantString(t *testing.T) {
	for in, want := range map[string]string{
		`'plain'`:                  "plain",
		`"it's"`:                   "it's",
		`'{"a":"b \"q\""}'`:        `{"a":"b "q""}`,
		`'back\\slash \'q\' \n\t'`: "back\\slash 'q' \n\t",
		`'\u00e9t\u00e9'`:          "été",
		`''`:                       "",
	} {
		got, err := unquoteGVariantString(in)
		if err != nil || got != want {
			t.Errorf("unquote(%s) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`plain`, `'open`, `'trailing\'`, `'\u12'`, `<1>`} {
		if _, err := unquoteGVariantString(bad); err == nil {
			t.Errorf("unquote(%s): no error", bad)
		}
	}
}

func TestParseLsLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Entry
	}{
		{"d00755 0 0      0 aa bb /usr/my dir", Entry{Path: "/usr/my dir", Type: 'd', Mode: 0o755, Checksum: "aa/bb"}},
		{"-02750 5 6 12 cc /usr/bin/x", Entry{Path: "/usr/bin/x", Type: '-', Mode: 0o2750, UID: 5, GID: 6, Size: 12, Checksum: "cc"}},
		{"l00777 0 0      0 dd /bin -> usr/bin", Entry{Path: "/bin", Type: 'l', Mode: 0o777, Checksum: "dd", Target: "usr/bin"}},
	} {
		got, err := parseLsLine(tc.line)
		if err != nil || got != tc.want {
			t.Errorf("parseLsLine(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "x 0 0 0", "d00755 0 0 0 aa /only-one-checksum", "-0644 a 0 1 cc /x"} {
		if _, err := parseLsLine(bad); err == nil {
			t.Errorf("parseLsLine(%q): no error", bad)
		}
	}
}

func TestParsePullStats(t *testing.T) {
	for out, want := range map[string]PullStats{
		"1 delta parts, 3 loose fetched; 1 KiB transferred in 0 seconds; 0 bytes content written\n": {DeltaParts: 1, Objects: 3},
		"10 metadata, 3 content objects fetched; 19538 KiB transferred in 0 seconds\n":              {Objects: 13},
		"": {},
	} {
		if got := parsePullStats(out); got != want {
			t.Errorf("parsePullStats(%q) = %+v, want %+v", out, got, want)
		}
	}
}

func TestLoadTrust(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "k.asc"), []byte("key"), 0o644)
	write := func(s string) string {
		p := filepath.Join(dir, "remotes.yaml")
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	tr, err := LoadTrust(write("remotes:\n  - {name: os, url: https://os.example.com/repo/, gpgKeyFile: k.asc}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := tr.Check("os", "https://os.example.com/repo"); err != nil || r.GPGKeyFile != filepath.Join(dir, "k.asc") {
		t.Errorf("Check(os, same URL without the slash) = %+v, %v", r, err)
	}
	if _, err := tr.Check("os", ""); err != nil {
		t.Errorf("Check(os, no URL from the fleet) = %v", err)
	}
	for _, tc := range []struct{ name, url, want string }{
		{"other", "", "remote other is not in the operator's trust file"},
		{"os", "https://evil.example.com/repo", "remote os is at https://evil.example.com/repo, but"},
	} {
		if _, err := tr.Check(tc.name, tc.url); !errors.Is(err, ErrUntrustedRemote) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check(%s, %s) = %v, want %q", tc.name, tc.url, err, tc.want)
		}
	}
	for src, want := range map[string]string{
		"remotes:\n  - {name: os, url: https://x}\n":                                                                       "gpgKeyFile is required",
		"remotes:\n  - {name: os, url: ftp://x, gpgKeyFile: k.asc}\n":                                                      `url "ftp://x" is not`,
		"remotes:\n  - {name: os, url: https://x, gpgKeyFile: none.asc}\n":                                                 "key:",
		"remotes:\n  - {name: 'a b', url: https://x, gpgKeyFile: k.asc}\n":                                                 "invalid name",
		"remotes:\n  - {name: os, url: https://x, gpgKeyFile: k.asc, gpg: 1}\n":                                            "unknown field",
		"remotes:\n  - {name: os, url: https://x, gpgKeyFile: k.asc}\n  - {name: os, url: https://y, gpgKeyFile: k.asc}\n": "listed twice",
	} {
		if _, err := LoadTrust(write(src)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadTrust(%q) = %v, want %q", src, err, want)
		}
	}
	empty, err := LoadTrust(filepath.Join(dir, "missing.yaml"))
	if err != nil || len(empty.Remotes) != 0 {
		t.Errorf("missing file: %+v, %v", empty, err)
	}
}
