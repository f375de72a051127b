// Package controlplane runs a real Kubernetes control plane — etcd,
// kube-apiserver and kube-controller-manager — on loopback addresses for
// Herd's integration tests and for `make testenv`.
//
// The binaries are built from the Go module proxy by test/k8s/build.sh and
// cached under <repo>/.cache/k8s (see BinDir). Start launches the three
// processes in a fresh directory with generated certificates, keys and an
// admin bearer token, waits until the API server is ready and the controller
// manager is working, and returns a handle whose Config is an admin
// rest.Config. Stop tears everything down again.
//
// Unlike controller-runtime's envtest, the controller manager runs too, so
// controllers such as the disruption controller (PodDisruptionBudget status)
// and the node lifecycle controller behave as in a real cluster. No kubelet
// or scheduler runs: Pods stay Pending unless a test binds them itself.
package controlplane

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Names of the control-plane processes, as used by LogPath and Logs.
const (
	Etcd              = "etcd"
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
)

// ServiceClusterIPRange is the Service IP range the API server is started
// with; the `kubernetes` Service gets its first address, 10.0.0.1.
const ServiceClusterIPRange = "10.0.0.0/24"

// AdminUser is the name of the user the admin token authenticates as. It is in
// the system:masters group.
const AdminUser = "herd-admin"

const (
	defaultStartTimeout = 2 * time.Minute
	defaultStopTimeout  = 30 * time.Second
	pollInterval        = 100 * time.Millisecond
	startAttempts       = 3
)

// Options configure Start. The zero value is valid.
type Options struct {
	// Dir is the directory in which the control plane's own run directory is
	// created with os.MkdirTemp; empty means the default temporary directory.
	Dir string
	// KeepDir keeps the run directory (data, certificates, logs) after Stop.
	KeepDir bool
	// BinDir holds the etcd, kube-apiserver and kube-controller-manager
	// binaries; empty means BinDir().
	BinDir string
	// Stdout and Stderr, when set, also receive the processes' standard
	// output and standard error, each line prefixed with the process name.
	// The per-process log files are written in any case.
	Stdout, Stderr io.Writer

	// ExtraEtcdFlags, ExtraAPIServerFlags and ExtraControllerManagerFlags are
	// appended to the processes' command lines; a flag given again overrides
	// the default set by Start.
	ExtraEtcdFlags              []string
	ExtraAPIServerFlags         []string
	ExtraControllerManagerFlags []string

	// StartTimeout bounds starting the processes (in addition to Start's
	// context); default 2m. Building the binaries (BinDir) is not included.
	StartTimeout time.Duration
	// StopTimeout is how long Stop waits for each process to exit after
	// SIGTERM before it sends SIGKILL; default 30s.
	StopTimeout time.Duration
}

// ControlPlane is a running control plane. Its methods are safe for
// concurrent use.
type ControlPlane struct {
	opts       Options
	dir        string
	binDir     string
	serverURL  string
	etcdURL    string
	token      string
	caPEM      []byte
	kubeconfig string
	procs      []*process // in start order

	startup map[string]time.Duration

	outMu    sync.Mutex // serialises output copied to Options.Stdout/Stderr
	stopOnce sync.Once
	stopErr  error
}

// Start starts etcd, kube-apiserver and kube-controller-manager and waits
// until the API server reports ready and the controller manager has created
// the default ServiceAccount. On error nothing is left running and the run
// directory is removed unless opts.KeepDir.
//
// Ports are picked free on 127.0.0.1 just before the processes start; if one
// of them is taken in between, Start tries again with new ports.
func Start(ctx context.Context, opts Options) (*ControlPlane, error) {
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = defaultStartTimeout
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = defaultStopTimeout
	}
	if opts.BinDir == "" {
		dir, err := BinDir()
		if err != nil {
			return nil, err
		}
		opts.BinDir = dir
	}
	if err := checkBinDir(opts.BinDir); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()

	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		var cp *ControlPlane
		cp, err = start(ctx, opts)
		if err == nil {
			return cp, nil
		}
		if !errors.Is(err, errAddrInUse) || ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

var (
	errAddrInUse   = errors.New("address already in use")
	errExitedEarly = errors.New("had exited before Stop")
)

func start(ctx context.Context, opts Options) (_ *ControlPlane, err error) {
	dir, err := os.MkdirTemp(opts.Dir, "herd-controlplane-")
	if err != nil {
		return nil, fmt.Errorf("controlplane: create run directory: %w", err)
	}
	cp := &ControlPlane{opts: opts, dir: dir, binDir: opts.BinDir, startup: map[string]time.Duration{}}
	defer func() {
		if err != nil {
			// A process that exited early is already reported in err.
			if stopErr := cp.shutdown(false); stopErr != nil {
				err = fmt.Errorf("%w (stopping after the failure: %v)", err, stopErr)
			}
		}
	}()

	ports, err := freePorts(3)
	if err != nil {
		return cp, err
	}
	etcdClientPort, etcdPeerPort, apiPort := ports[0], ports[1], ports[2]
	cp.etcdURL = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(etcdClientPort))
	etcdPeerURL := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(etcdPeerPort))
	cp.serverURL = "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(apiPort))

	f, err := writeFiles(dir)
	if err != nil {
		return cp, err
	}
	cp.token = f.token
	cp.caPEM = f.caPEM
	cp.kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := cp.writeKubeconfig(cp.kubeconfig); err != nil {
		return cp, err
	}

	// etcd.
	etcdArgs := []string{
		"--name=default",
		"--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=" + cp.etcdURL,
		"--advertise-client-urls=" + cp.etcdURL,
		"--listen-peer-urls=" + etcdPeerURL,
		"--initial-advertise-peer-urls=" + etcdPeerURL,
		"--initial-cluster=default=" + etcdPeerURL,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync=true",
	}
	t0 := time.Now()
	etcdProc, err := cp.spawn(Etcd, append(etcdArgs, opts.ExtraEtcdFlags...), etcdEnv())
	if err != nil {
		return cp, err
	}
	if err := cp.waitHTTP(ctx, etcdProc, cp.etcdURL+"/health", nil); err != nil {
		return cp, fmt.Errorf("controlplane: waiting for etcd: %w", err)
	}
	cp.startup[Etcd] = time.Since(t0)

	// kube-apiserver.
	apiArgs := []string{
		"--etcd-servers=" + cp.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The endpoint reconciler rejects a loopback advertise address, and
		// nothing here needs the `kubernetes` Service's endpoints.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--tls-cert-file=" + f.servingCert,
		"--tls-private-key-file=" + f.servingKey,
		"--client-ca-file=" + f.caCert,
		"--token-auth-file=" + f.tokens,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + f.saPub,
		"--service-account-signing-key-file=" + f.saKey,
		"--service-cluster-ip-range=" + ServiceClusterIPRange,
		"--allow-privileged=true",
		"--profiling=false",
	}
	t0 = time.Now()
	apiProc, err := cp.spawn(APIServer, append(apiArgs, opts.ExtraAPIServerFlags...), os.Environ())
	if err != nil {
		return cp, err
	}
	if err := cp.waitHTTP(ctx, apiProc, cp.serverURL+"/readyz", cp.httpClient()); err != nil {
		return cp, fmt.Errorf("controlplane: waiting for kube-apiserver /readyz: %w", err)
	}
	cp.startup[APIServer] = time.Since(t0)

	// kube-controller-manager.
	kcmArgs := []string{
		"--kubeconfig=" + cp.kubeconfig,
		"--authentication-kubeconfig=" + cp.kubeconfig,
		"--authorization-kubeconfig=" + cp.kubeconfig,
		"--service-account-private-key-file=" + f.saKey,
		"--root-ca-file=" + f.caCert,
		"--cluster-signing-cert-file=" + f.caCert,
		"--cluster-signing-key-file=" + f.caKey,
		"--leader-elect=false",
		"--controllers=*",
		"--secure-port=0",
		"--profiling=false",
	}
	t0 = time.Now()
	kcmProc, err := cp.spawn(ControllerManager, append(kcmArgs, opts.ExtraControllerManagerFlags...), os.Environ())
	if err != nil {
		return cp, err
	}

	// The default namespace comes from kube-apiserver, its default
	// ServiceAccount from kube-controller-manager's serviceaccount
	// controller: seeing it proves the controller manager runs.
	cs, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		return cp, fmt.Errorf("controlplane: client: %w", err)
	}
	var last error // transient errors are retried until the deadline
	err = cp.poll(ctx, []*process{etcdProc, apiProc, kcmProc}, func(ctx context.Context) (bool, error) {
		if _, last = cs.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{}); last != nil {
			return false, nil
		}
		if _, last = cs.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{}); last != nil {
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return cp, fmt.Errorf("controlplane: waiting for the default namespace and ServiceAccount (last error: %v): %w", last, err)
	}
	cp.startup[ControllerManager] = time.Since(t0)
	return cp, nil
}

// Config returns a new admin rest.Config (bearer token of AdminUser, in
// group system:masters) for the API server.
func (cp *ControlPlane) Config() *rest.Config {
	return &rest.Config{
		Host:        cp.serverURL,
		BearerToken: cp.token,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: append([]byte(nil), cp.caPEM...),
		},
	}
}

// KubeconfigPath is the path of a kubeconfig file for the admin user, written
// by Start. It embeds the CA and token, so it can be copied elsewhere.
func (cp *ControlPlane) KubeconfigPath() string { return cp.kubeconfig }

// ServerURL is the API server's URL, https://127.0.0.1:<port>.
func (cp *ControlPlane) ServerURL() string { return cp.serverURL }

// EtcdURL is etcd's client URL, http://127.0.0.1:<port>.
func (cp *ControlPlane) EtcdURL() string { return cp.etcdURL }

// Dir is the run directory: etcd data, certificates, keys, kubeconfig and
// logs.
func (cp *ControlPlane) Dir() string { return cp.dir }

// CAData is the PEM-encoded CA certificate that signed the API server's
// serving certificate. The API server also accepts client certificates it
// signs, and kube-controller-manager signs CertificateSigningRequests with it.
func (cp *ControlPlane) CAData() []byte { return append([]byte(nil), cp.caPEM...) }

// KubectlPath is the path of the kubectl binary next to the control-plane
// binaries (it may not exist when BinDir came from KUBEBUILDER_ASSETS).
func (cp *ControlPlane) KubectlPath() string { return filepath.Join(cp.binDir, "kubectl") }

// LogPath is the path of the log file (stdout and stderr) of process name:
// Etcd, APIServer or ControllerManager.
func (cp *ControlPlane) LogPath(name string) string {
	return filepath.Join(cp.dir, name+".log")
}

// Logs maps each started process's name to its log file.
func (cp *ControlPlane) Logs() map[string]string {
	m := make(map[string]string, len(cp.procs))
	for _, p := range cp.procs {
		m[p.name] = p.logPath
	}
	return m
}

// PIDs maps each started process's name to its process ID.
func (cp *ControlPlane) PIDs() map[string]int {
	m := make(map[string]int, len(cp.procs))
	for _, p := range cp.procs {
		m[p.name] = p.cmd.Process.Pid
	}
	return m
}

// StartupDurations maps each process's name to the time from its start until
// Start saw it working: etcd's /health, kube-apiserver's /readyz, and the
// default ServiceAccount created by kube-controller-manager.
func (cp *ControlPlane) StartupDurations() map[string]time.Duration {
	return maps.Clone(cp.startup)
}

// TailLogs returns the last n lines of each process's log, for printing when
// a test fails.
func (cp *ControlPlane) TailLogs(n int) string {
	var b strings.Builder
	for _, p := range cp.procs {
		fmt.Fprintf(&b, "==> %s (%s) <==\n%s\n", p.name, p.logPath, tailFile(p.logPath, n))
	}
	return b.String()
}

// Stop stops the processes in reverse start order — SIGTERM, then SIGKILL
// after Options.StopTimeout — and removes the run directory unless
// Options.KeepDir. It reports processes that had exited before Stop was
// called. Calling Stop again returns the first result.
func (cp *ControlPlane) Stop() error {
	return cp.shutdown(true)
}

func (cp *ControlPlane) shutdown(reportExited bool) error {
	cp.stopOnce.Do(func() {
		var errs []error
		for i := len(cp.procs) - 1; i >= 0; i-- {
			if err := cp.procs[i].stop(cp.opts.StopTimeout); err != nil && (reportExited || !errors.Is(err, errExitedEarly)) {
				errs = append(errs, err)
			}
		}
		if !cp.opts.KeepDir && cp.dir != "" {
			if err := os.RemoveAll(cp.dir); err != nil {
				errs = append(errs, fmt.Errorf("controlplane: remove %s: %w", cp.dir, err))
			}
		}
		cp.stopErr = errors.Join(errs...)
	})
	return cp.stopErr
}

// ServiceAccountConfig returns a rest.Config that authenticates as the
// ServiceAccount namespace/name with a bearer token from the TokenRequest
// API, valid for 24 hours. The namespace and the ServiceAccount are created
// if missing. The ServiceAccount has no permissions beyond the defaults
// unless the caller binds it to a role.
func (cp *ControlPlane) ServiceAccountConfig(ctx context.Context, namespace, name string) (*rest.Config, error) {
	token, err := cp.ServiceAccountToken(ctx, namespace, name, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	cfg := cp.Config()
	cfg.BearerToken = token
	return cfg, nil
}

// ServiceAccountToken mints a token for the ServiceAccount namespace/name
// with the TokenRequest API, creating the namespace and ServiceAccount if
// missing. ttl must be at least 10 minutes (the API's minimum).
func (cp *ControlPlane) ServiceAccountToken(ctx context.Context, namespace, name string, ttl time.Duration) (string, error) {
	cs, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		return "", fmt.Errorf("controlplane: client: %w", err)
	}
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("controlplane: create namespace %s: %w", namespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	_, err = cs.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("controlplane: create ServiceAccount %s/%s: %w", namespace, name, err)
	}
	seconds := int64(ttl / time.Second)
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("controlplane: request token for ServiceAccount %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// writeKubeconfig writes an admin kubeconfig with the CA and token embedded.
func (cp *ControlPlane) writeKubeconfig(path string) error {
	const name = "herd-controlplane"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: cp.serverURL, CertificateAuthorityData: cp.caPEM}
	cfg.AuthInfos[AdminUser] = &clientcmdapi.AuthInfo{Token: cp.token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: AdminUser, Namespace: metav1.NamespaceDefault}
	cfg.CurrentContext = name
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("controlplane: write kubeconfig %s: %w", path, err)
	}
	return nil
}

// httpClient trusts the control plane's CA and sends the admin token.
func (cp *ControlPlane) httpClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.caPEM)
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &bearerTransport{
			token: cp.token,
			base:  &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
		},
	}
}

type bearerTransport struct {
	token string
	base  http.RoundTripper
}

func (t *bearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+t.token)
	return t.base.RoundTrip(req)
}

// waitHTTP polls url until it answers 200, p exits or ctx ends.
func (cp *ControlPlane) waitHTTP(ctx context.Context, p *process, url string, client *http.Client) error {
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	defer client.CloseIdleConnections()
	var last string
	err := cp.poll(ctx, []*process{p}, func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return true, nil
		}
		last = fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(body))
		return false, nil
	})
	if err != nil && last != "" {
		return fmt.Errorf("%w (last answer: %s)", err, last)
	}
	return err
}

// poll calls cond every pollInterval until it returns true or an error, one
// of procs exits, or ctx ends.
func (cp *ControlPlane) poll(ctx context.Context, procs []*process, cond func(context.Context) (bool, error)) error {
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		for _, p := range procs {
			if err := p.exited(); err != nil {
				return err
			}
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ok, err := cond(cctx)
		cancel()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; logs:\n%s", ctx.Err(), cp.TailLogs(20))
		case <-ticker.C:
		}
	}
}

// process is one running control-plane binary.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid once done is closed

	mu       sync.Mutex
	stopping bool
}

// spawn starts binary name from the bin dir with args, logging to
// <dir>/<name>.log.
func (cp *ControlPlane) spawn(name string, args, env []string) (*process, error) {
	logPath := cp.LogPath(name)
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("controlplane: create log for %s: %w", name, err)
	}
	bin := filepath.Join(cp.binDir, name)
	fmt.Fprintf(logFile, "# %s %s\n", bin, strings.Join(args, " "))

	cmd := exec.Command(bin, args...)
	cmd.Dir = cp.dir
	cmd.Env = env
	cmd.Stdout = cp.teeWriter(logFile, cp.opts.Stdout, name)
	cmd.Stderr = cp.teeWriter(logFile, cp.opts.Stderr, name)
	// Bound Wait's copying of output when Stdout/Stderr are not files.
	cmd.WaitDelay = 5 * time.Second
	setSysProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("controlplane: start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	cp.procs = append(cp.procs, p)
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// exited returns an error if the process has exited.
func (p *process) exited() error {
	select {
	case <-p.done:
	default:
		return nil
	}
	msg := tailFile(p.logPath, 30)
	err := fmt.Errorf("controlplane: %s exited: %v; log %s:\n%s", p.name, p.waitErr, p.logPath, msg)
	if strings.Contains(msg, "address already in use") {
		err = fmt.Errorf("%w: %w", errAddrInUse, err)
	}
	return err
}

// stop sends SIGTERM, waits up to timeout, then sends SIGKILL and waits for
// the process to be reaped. It reports an exit that happened before stop.
func (p *process) stop(timeout time.Duration) error {
	p.mu.Lock()
	already := p.stopping
	p.stopping = true
	p.mu.Unlock()
	if already {
		<-p.done
		return nil
	}
	select {
	case <-p.done:
		return fmt.Errorf("controlplane: %s %w: %v (log %s)", p.name, errExitedEarly, p.waitErr, p.logPath)
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("controlplane: %s (pid %d) did not exit after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// etcdEnv is the environment without ETCD_* variables, which etcd would
// read as configuration and which conflict with its flags.
func etcdEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			env = append(env, kv)
		}
	}
	return env
}

// freePorts returns n distinct free TCP ports on 127.0.0.1. The listeners
// are held until all ports are picked so that they differ; another process
// may still take one before the control plane binds it (Start retries).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("controlplane: pick a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tailFile returns the last n lines of the file at path.
func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	defer f.Close()
	const maxTail = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > maxTail {
		_, _ = f.Seek(-maxTail, io.SeekEnd)
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), maxTail)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// teeWriter writes to the log file and, if extra is set, to extra with each
// line prefixed by "[name] ", serialised with the other processes' output.
func (cp *ControlPlane) teeWriter(log *os.File, extra io.Writer, name string) io.Writer {
	if extra == nil {
		return log
	}
	return io.MultiWriter(log, &prefixWriter{mu: &cp.outMu, w: extra, prefix: "[" + name + "] "})
}

// prefixWriter writes whole lines, each prefixed.
type prefixWriter struct {
	mu     *sync.Mutex // shared by all writers of one ControlPlane
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		line := append([]byte(p.prefix), p.buf[:i+1]...)
		p.buf = p.buf[i+1:]
		p.mu.Lock()
		_, _ = p.w.Write(line) // a broken extra writer must not fail the process's output
		p.mu.Unlock()
	}
	return len(b), nil
}

// randomToken returns 32 random bytes, hex-encoded.
func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("controlplane: random token: %w", err)
	}
	return hex.EncodeToString(b), nil
}
