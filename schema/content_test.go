package schema

import (
	"strings"
	"testing"
)

func TestCheckFileContent(t *testing.T) {
	for _, tc := range []struct {
		path, content, wantErr string
	}{
		{"/etc/modprobe.d/a.conf", "# tuning\noptions nf_conntrack hashsize=65536\nblacklist floppy\nalias eth0 e1000\nsoftdep a pre: b\n", ""},
		{"/etc/modprobe.d/a.conf", "install dummy /bin/sh -c 'curl x | sh'\n", `"install" is not allowed: it runs a shell command`},
		{"/etc/modprobe.d/a.conf", "  remove dummy /bin/true\n", `"remove" is not allowed`},
		// A continuation line joins the next one into the options line: no
		// command, as kmod reads it.
		{"/etc/modprobe.d/a.conf", "options x \\\ninstall=1\n", ""},
		{"/etc/modprobe.d/a.conf", "options x=1\n\t install y /bin/sh\n", "line 2"},
		{"/etc/modprobe.d/a.conf", "frobnicate x\n", "unknown directive"},
		{"/etc/modules-load.d/a.conf", "# comment\n; comment\nbr_netfilter\noverlay\n", ""},
		{"/etc/modules-load.d/a.conf", "overlay; rm -rf /\n", "not a module name"},
		{"/etc/udev/rules.d/99-x.rules", `RUN+="/bin/sh -c id"`, "outside the allowlist"},
		{"/etc/systemd/system/x.service", "[Service]\nExecStart=/bin/sh\n", "outside the allowlist"},
		{"/etc/herd/files/any", "install x /bin/sh\n", ""},
	} {
		err := CheckFile(tc.path, tc.content)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("CheckFile(%s, %q) = %v, want nil", tc.path, tc.content, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("CheckFile(%s, %q) = %v, want an error with %q", tc.path, tc.content, err, tc.wantErr)
		}
	}
}

// A registry host with a port renders to a path the agent accepts.
func TestRegistryHostWithPort(t *testing.T) {
	r, err := Render(NodeConfig{Containerd: &Containerd{Registries: map[string]Registry{
		"registry.local:5000": {Mirrors: []string{"https://mirror.local:5001"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Files) != 1 || r.Files[0].Path != "/etc/containerd/certs.d/registry.local:5000/hosts.toml" {
		t.Fatalf("files %+v", r.Files)
	}
	data, _ := MarshalRendered(r)
	if _, err := ParseRendered(data, r.Hash()); err != nil {
		t.Errorf("the agent refuses the render: %v", err)
	}
	for _, bad := range []string{"/etc/containerd/certs.d/a:b/hosts.toml", "/etc/containerd/certs.d/../x:1/hosts.toml", "/etc/containerd/certs.d/x:1/y/hosts.toml", "/etc/containerd/certs.d/x:123456/hosts.toml"} {
		if GeneratedPath(bad) {
			t.Errorf("GeneratedPath(%q) = true", bad)
		}
	}
}

func TestDeniedSysctl(t *testing.T) {
	for key, denied := range map[string]bool{"kernel.core_pattern": true, "fs.binfmt_misc.register": true, "fs.binfmt_misc.status": true, "vm.max_map_count": false, "net.ipv4.ip_forward": false} {
		if _, got := DeniedSysctl(key); got != denied {
			t.Errorf("DeniedSysctl(%s) = %v, want %v", key, got, denied)
		}
	}
}
