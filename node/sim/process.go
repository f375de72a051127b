package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"herd.dev/herd/node/metrics"
	"herd.dev/herd/os/ostree/osfixture"
)

// agentProc is a herd-agent process of a node.
type agentProc struct {
	cmd    *exec.Cmd
	addr   string // of /metrics
	exited chan error
}

// startProc starts node n's herd-agent from its state directory.
func (f *Fleet) startProc(n *simNode) (*agentProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	level := "error" // the agents' levels are the controller's: no warn
	if f.log.Enabled(context.Background(), slog.LevelDebug) {
		level = "debug"
	} else if f.log.Enabled(context.Background(), slog.LevelInfo) {
		level = "info"
	}
	cmd := exec.Command(f.opts.AgentBinary,
		"--node", n.name,
		"--kubeconfig", f.kubeconfig,
		"--root", n.root,
		"--sysroot", n.os.Path,
		"--osname", n.os.OSName,
		"--state-dir", filepath.Join(n.root, "var/lib/herd"),
		"--os-trust", f.trustFile,
		"--reboot-timeout", time.Hour.String(),
		"--metrics-addr", addr,
		"--log-level", level)
	cmd.Args = append(cmd.Args, f.healerArgs(n)...)
	cmd.Env = append(append(os.Environ(), osfixture.Env...), f.bus.Env())
	cmd.Stdout, cmd.Stderr = f.opts.AgentLog, f.opts.AgentLog
	// The agent dies with the simulator.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", f.opts.AgentBinary, err)
	}
	f.bus.Track(cmd.Process.Pid, f.machine(n))
	p := &agentProc{cmd: cmd, addr: addr, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	return p, nil
}

// stopProc stops an agent process as a shutdown does (SIGTERM;
// SIGKILL after 10 s).
func (f *Fleet) stopProc(p *agentProc) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	f.bus.Untrack(p.cmd.Process.Pid)
}

// scrape reads the counters of a node's agent process from its /metrics.
func scrape(ctx context.Context, addr string) (metrics.Counters, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return metrics.Counters{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return metrics.Counters{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return metrics.Counters{}, fmt.Errorf("GET %s/metrics: %s", addr, resp.Status)
	}
	return metrics.Parse(resp.Body)
}

// freeAddr returns a loopback address with a port free at the moment.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("sim: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// writeKubeconfig writes cfg as a kubeconfig file for the agent processes.
func writeKubeconfig(cfg *rest.Config, path string) error {
	c := clientcmdapi.NewConfig()
	c.Clusters["sim"] = &clientcmdapi.Cluster{
		Server:                   cfg.Host,
		CertificateAuthority:     cfg.CAFile,
		CertificateAuthorityData: cfg.CAData,
		InsecureSkipTLSVerify:    cfg.Insecure,
		TLSServerName:            cfg.ServerName,
	}
	c.AuthInfos["sim"] = &clientcmdapi.AuthInfo{
		Token:                 cfg.BearerToken,
		TokenFile:             cfg.BearerTokenFile,
		ClientCertificate:     cfg.CertFile,
		ClientCertificateData: cfg.CertData,
		ClientKey:             cfg.KeyFile,
		ClientKeyData:         cfg.KeyData,
		Username:              cfg.Username,
		Password:              cfg.Password,
	}
	c.Contexts["sim"] = &clientcmdapi.Context{Cluster: "sim", AuthInfo: "sim"}
	c.CurrentContext = "sim"
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		return fmt.Errorf("sim: kubeconfig for the agents: %w", err)
	}
	return os.Chmod(path, 0o600)
}

// writeTrust writes a trust file, as the operator's ConfigMap holds one,
// that trusts the simulator's repository as remote, with the key its
// commits are signed with, and returns its path.
func writeTrust(dir, remote string, repo *osfixture.Repo) (string, error) {
	if repo.KeyPath == "" {
		return "", errors.New("sim: herd-agent processes pull only from a remote their trust file lists, verified with its key: unsigned OS commits need agents in the simulator (in-process)")
	}
	key, err := os.ReadFile(repo.KeyPath)
	if err != nil {
		return "", fmt.Errorf("sim: trust file: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("sim: trust file: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, remote+".asc"), key, 0o644); err != nil {
		return "", fmt.Errorf("sim: trust file: %w", err)
	}
	p := filepath.Join(dir, "remotes.yaml")
	data := fmt.Sprintf("remotes:\n  - name: %s\n    url: %s\n    gpgKeyFile: %s.asc\n", remote, repo.URL, remote)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		return "", fmt.Errorf("sim: trust file: %w", err)
	}
	return p, nil
}
