// Package podrun runs a container of a real Pod object the way a kubelet
// would, on this machine: in a bubblewrap sandbox with its own network namespace.
//
// The container's arguments and environment are exactly what the kubelet
// would give it: $(VAR) expansion, literal values, the downward API,
// Secret and ConfigMap references, the Kubernetes service variables. Its
// volumes are mounted at their mount paths: emptyDir, Secret, ConfigMap, hostPath
// (mapped to a directory standing for the node's path), and the projected
// ServiceAccount token bound to the Pod. runAsUser is honoured,
// readOnlyRootFilesystem too. The image is replaced by a binary on this
// machine, as its entrypoint. Inside the sandbox a helper (the test binary
// itself, see HelperMain) forwards the API server's address to the real
// one and exposes the container's ports on Unix sockets the test dials.
package podrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Options says which container of which Pod to run, and how this machine
// stands in for the node.
type Options struct {
	// Rest is an admin config of the cluster; APIServer its host:port.
	Rest      *rest.Config
	APIServer string
	// CA is the cluster's CA, for the ServiceAccount volume when the
	// kube-root-ca.crt ConfigMap is missing.
	CA []byte
	// Pod as read from the API server, and the container to run.
	Pod       *corev1.Pod
	Container string
	// Entrypoints maps an image repository (the image without its tag)
	// to the binary standing for its entrypoint.
	Entrypoints map[string]string
	// HostPaths maps a hostPath volume's path to the directory that stands
	// for it.
	HostPaths map[string]string
	// Dir holds the sandbox's files; it must be empty or missing.
	Dir string
	// Helper is the binary that runs HelperMain: the test binary.
	Helper string
	// Forward lists more host:port addresses of this machine that the
	// container reaches at the same address (a Git server, say).
	Forward []string
	// Output receives the container's stdout and stderr.
	Output io.Writer
}

// Process is a running container.
type Process struct {
	opts  Options
	cmd   *exec.Cmd
	stdin io.WriteCloser
	run   string // Dir/run: the sandbox's /herd-pod
	ports map[string]int
	done  chan struct{}
	err   error
	stopL []net.Listener
}

// Start starts the container.
func Start(ctx context.Context, opts Options) (*Process, error) {
	c := container(opts.Pod, opts.Container)
	if c == nil {
		return nil, fmt.Errorf("pod %s has no container %s", opts.Pod.Name, opts.Container)
	}
	cs, err := kubernetes.NewForConfig(opts.Rest)
	if err != nil {
		return nil, err
	}
	p := &Process{opts: opts, run: filepath.Join(opts.Dir, "run"), ports: map[string]int{}, done: make(chan struct{})}
	if err := os.MkdirAll(p.run, 0o777); err != nil {
		return nil, err
	}
	if err := os.Chmod(p.run, 0o777); err != nil {
		return nil, err
	}
	uid, gid := runAs(opts.Pod, c)
	if err := openPath(opts.Dir); err != nil {
		return nil, err
	}
	env, err := environment(ctx, cs, opts, c)
	if err != nil {
		return nil, err
	}
	argv, err := entrypoint(opts, c)
	if err != nil {
		return nil, err
	}
	argv = append(argv, expandAll(c.Args, env)...)
	mounts, err := p.volumes(ctx, cs, c, uid)
	if err != nil {
		return nil, err
	}
	var expose []int
	for _, port := range c.Ports {
		p.ports[port.Name] = int(port.ContainerPort)
		expose = append(expose, int(port.ContainerPort))
	}
	cfg := helperConfig{Expose: expose, SockDir: "/herd-pod", Argv: argv, Env: env}
	for i, addr := range append([]string{opts.APIServer}, opts.Forward...) {
		sock := fmt.Sprintf("fwd-%d.sock", i)
		if err := p.forward(addr, sock); err != nil {
			return nil, err
		}
		cfg.Forward = append(cfg.Forward, forward{Addr: addr, Sock: "/herd-pod/" + sock})
	}
	args := p.bwrapArgs(c, mounts)
	args = append(args, "--", "/herd-pod/helper")
	cmd := exec.Command("bwrap", args...)
	cmd.Env = []string{helperEnv + "=" + cfg.encode()}
	cmd.Stdout, cmd.Stderr = opts.Output, opts.Output
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bwrap: %w", err)
	}
	p.cmd = cmd
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

func container(pod *corev1.Pod, name string) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return &pod.Spec.Containers[i]
		}
	}
	return nil
}

// runAs is the container's user and group (0 for root).
func runAs(pod *corev1.Pod, c *corev1.Container) (uid, gid int64) {
	if sc := pod.Spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = *sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = *sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = *sc.RunAsGroup
		}
	}
	return uid, gid
}

// openPath lets other users traverse the directories down to dir (the
// sandbox of a non-root container is set up by that user).
func openPath(dir string) error {
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				return err
			}
		}
	}
	return nil
}

// entrypoint is the binary standing for the container's image, with the
// container's command if it has one.
func entrypoint(opts Options, c *corev1.Container) ([]string, error) {
	repo := c.Image
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	bin, ok := opts.Entrypoints[repo]
	if !ok {
		return nil, fmt.Errorf("no binary stands for image %s", c.Image)
	}
	if len(c.Command) > 0 {
		return nil, fmt.Errorf("container %s sets a command; only the image's entrypoint is known here", c.Name)
	}
	if err := install(bin, filepath.Join(opts.Dir, "run", "entrypoint")); err != nil {
		return nil, err
	}
	if err := install(opts.Helper, filepath.Join(opts.Dir, "run", "helper")); err != nil {
		return nil, err
	}
	return []string{"/herd-pod/entrypoint"}, nil
}

// environment is the container's environment as the kubelet builds it.
func environment(ctx context.Context, cs kubernetes.Interface, opts Options, c *corev1.Container) ([]string, error) {
	host, port, err := net.SplitHostPort(opts.APIServer)
	if err != nil {
		return nil, err
	}
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	set("HOSTNAME", opts.Pod.Name)
	set("KUBERNETES_SERVICE_HOST", host)
	set("KUBERNETES_SERVICE_PORT", port)
	set("KUBERNETES_SERVICE_PORT_HTTPS", port)
	set("KUBERNETES_PORT", "tcp://"+opts.APIServer)
	ns := opts.Pod.Namespace
	for _, from := range c.EnvFrom {
		data, err := source(ctx, cs, ns, from.SecretRef, from.ConfigMapRef)
		if err != nil {
			return nil, err
		}
		for k, v := range data {
			set(from.Prefix+k, v)
		}
	}
	lookup := func(name string) (string, bool) { v, ok := vars[name]; return v, ok }
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, lookup))
			continue
		}
		v, ok, err := valueFrom(ctx, cs, opts.Pod, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if ok {
			set(e.Name, v)
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out, nil
}

// source reads all keys of an envFrom Secret or ConfigMap.
func source(ctx context.Context, cs kubernetes.Interface, ns string, s *corev1.SecretEnvSource, c *corev1.ConfigMapEnvSource) (map[string]string, error) {
	out := map[string]string{}
	switch {
	case s != nil:
		sec, err := cs.CoreV1().Secrets(ns).Get(ctx, s.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && s.Optional != nil && *s.Optional {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		for k, v := range sec.Data {
			out[k] = string(v)
		}
	case c != nil:
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, c.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && c.Optional != nil && *c.Optional {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		for k, v := range cm.Data {
			out[k] = v
		}
	}
	return out, nil
}

// valueFrom resolves a valueFrom; ok is false for a missing optional key.
func valueFrom(ctx context.Context, cs kubernetes.Interface, pod *corev1.Pod, vf *corev1.EnvVarSource) (string, bool, error) {
	switch {
	case vf.FieldRef != nil:
		v, err := field(pod, vf.FieldRef.FieldPath)
		return v, err == nil, err
	case vf.SecretKeyRef != nil:
		ref := vf.SecretKeyRef
		sec, err := cs.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		optional := ref.Optional != nil && *ref.Optional
		if apierrors.IsNotFound(err) && optional {
			return "", false, nil
		}
		if err != nil {
			return "", false, err
		}
		v, ok := sec.Data[ref.Key]
		if !ok && !optional {
			return "", false, fmt.Errorf("secret %s has no key %s", ref.Name, ref.Key)
		}
		return string(v), ok, nil
	case vf.ConfigMapKeyRef != nil:
		ref := vf.ConfigMapKeyRef
		cm, err := cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		optional := ref.Optional != nil && *ref.Optional
		if apierrors.IsNotFound(err) && optional {
			return "", false, nil
		}
		if err != nil {
			return "", false, err
		}
		v, ok := cm.Data[ref.Key]
		if !ok && !optional {
			return "", false, fmt.Errorf("configmap %s has no key %s", ref.Name, ref.Key)
		}
		return v, ok, nil
	}
	return "", false, errors.New("unsupported valueFrom")
}

// field is the downward API.
func field(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.hostIP":
		return "127.0.0.1", nil
	}
	return "", fmt.Errorf("downward API field %s is not simulated", path)
}

// expandAll expands $(VAR) references in args as the kubelet does.
func expandAll(args, env []string) []string {
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	lookup := func(name string) (string, bool) { v, ok := vars[name]; return v, ok }
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expand(a, lookup)
	}
	return out
}

// expand replaces $(NAME) with NAME's value when it is defined, and $$
// with $, leaving anything else as is (k8s.io/kubernetes third_party
// forked/golang/expansion).
func expand(s string, lookup func(string) (string, bool)) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// mount is one bind mount into the sandbox.
type mount struct {
	src, dst string
	ro       bool
}

// volumes prepares the container's volume mounts.
func (p *Process) volumes(ctx context.Context, cs kubernetes.Interface, c *corev1.Container, uid int64) ([]mount, error) {
	pod := p.opts.Pod
	byName := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		byName[v.Name] = v
	}
	var out []mount
	for _, vm := range c.VolumeMounts {
		v, ok := byName[vm.Name]
		if !ok {
			return nil, fmt.Errorf("volume mount %s names no volume", vm.Name)
		}
		dir := filepath.Join(p.opts.Dir, "volumes", v.Name)
		switch {
		case v.HostPath != nil:
			host, ok := p.opts.HostPaths[v.HostPath.Path]
			if !ok {
				return nil, fmt.Errorf("no directory stands for hostPath %s", v.HostPath.Path)
			}
			dir = host
		case v.EmptyDir != nil:
			if err := mkdirOwned(dir, uid); err != nil {
				return nil, err
			}
		case v.Secret != nil:
			files, err := secretFiles(ctx, cs, pod.Namespace, v.Secret)
			if err != nil {
				return nil, err
			}
			if err := writeFiles(dir, files, uid); err != nil {
				return nil, err
			}
		case v.ConfigMap != nil:
			files, err := configMapFiles(ctx, cs, pod.Namespace, v.ConfigMap)
			if err != nil {
				return nil, err
			}
			if err := writeFiles(dir, files, uid); err != nil {
				return nil, err
			}
		case v.Projected != nil:
			files, err := p.projected(ctx, cs, v.Projected)
			if err != nil {
				return nil, err
			}
			if err := writeFiles(dir, files, uid); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("volume %s: kind not simulated", v.Name)
		}
		if vm.SubPath != "" {
			dir = filepath.Join(dir, vm.SubPath)
		}
		out = append(out, mount{src: dir, dst: vm.MountPath, ro: vm.ReadOnly || v.Secret != nil || v.Projected != nil})
	}
	return out, nil
}

func secretFiles(ctx context.Context, cs kubernetes.Interface, ns string, s *corev1.SecretVolumeSource) (map[string][]byte, error) {
	sec, err := cs.CoreV1().Secrets(ns).Get(ctx, s.SecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && s.Optional != nil && *s.Optional {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret volume %s: %w", s.SecretName, err)
	}
	return sec.Data, nil
}

// configMapFiles are a ConfigMap volume's files: every key, or none when
// an optional ConfigMap is missing.
func configMapFiles(ctx context.Context, cs kubernetes.Interface, ns string, c *corev1.ConfigMapVolumeSource) (map[string][]byte, error) {
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, c.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && c.Optional != nil && *c.Optional {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config map volume %s: %w", c.Name, err)
	}
	files := map[string][]byte{}
	for k, v := range cm.Data {
		files[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		files[k] = v
	}
	return files, nil
}

// projected fills a projected volume: the ServiceAccount token bound to the
// pod, ConfigMaps (the cluster's CA), the downward API.
func (p *Process) projected(ctx context.Context, cs kubernetes.Interface, v *corev1.ProjectedVolumeSource) (map[string][]byte, error) {
	pod := p.opts.Pod
	files := map[string][]byte{}
	for _, src := range v.Sources {
		switch {
		case src.ServiceAccountToken != nil:
			t := src.ServiceAccountToken
			req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
				ExpirationSeconds: t.ExpirationSeconds,
				BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			}}
			if t.Audience != "" {
				req.Spec.Audiences = []string{t.Audience}
			}
			tr, err := cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, req, metav1.CreateOptions{})
			if err != nil {
				return nil, fmt.Errorf("token for pod %s: %w", pod.Name, err)
			}
			files[t.Path] = []byte(tr.Status.Token)
		case src.ConfigMap != nil:
			cm, err := cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, src.ConfigMap.Name, metav1.GetOptions{})
			if err != nil && src.ConfigMap.Name == "kube-root-ca.crt" && apierrors.IsNotFound(err) {
				cm, err = &corev1.ConfigMap{Data: map[string]string{"ca.crt": string(p.opts.CA)}}, nil
			}
			if err != nil {
				return nil, err
			}
			for _, it := range src.ConfigMap.Items {
				files[it.Path] = []byte(cm.Data[it.Key])
			}
		case src.DownwardAPI != nil:
			for _, it := range src.DownwardAPI.Items {
				if it.FieldRef == nil {
					continue
				}
				v, err := field(pod, it.FieldRef.FieldPath)
				if err != nil {
					return nil, err
				}
				files[it.Path] = []byte(v)
			}
		}
	}
	return files, nil
}

func mkdirOwned(dir string, uid int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.Chown(dir, int(uid), int(uid))
}

func writeFiles(dir string, files map[string][]byte, uid int64) error {
	if err := mkdirOwned(dir, uid); err != nil {
		return err
	}
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o400); err != nil {
			return err
		}
		if err := os.Chown(p, int(uid), int(uid)); err != nil {
			return err
		}
	}
	return nil
}

// bwrapArgs builds the sandbox: a fresh root with the machine's /usr and
// /etc read-only, the container's mounts, its own network namespace (its
// own PID namespace too unless hostPID), read-only when the container asks.
func (p *Process) bwrapArgs(c *corev1.Container, mounts []mount) []string {
	args := []string{"--die-with-parent", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--hostname", p.opts.Pod.Name,
		"--ro-bind", "/usr", "/usr", "--dir", "/etc",
		"--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
		"--proc", "/proc", "--dev", "/dev", "--dir", "/tmp", "--dir", "/var/run",
		"--bind", p.run, "/herd-pod",
	}
	// The image's /etc stands in as the few files a static binary and the
	// tools it runs (git, ostree) read.
	for _, f := range []string{"passwd", "group", "hosts", "nsswitch.conf", "ssl", "ca-certificates", "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d"} {
		if _, err := os.Stat("/etc/" + f); err == nil {
			args = append(args, "--ro-bind", "/etc/"+f, "/etc/"+f)
		}
	}
	if !p.opts.Pod.Spec.HostPID {
		args = append(args, "--unshare-pid")
	}
	for _, m := range mounts {
		flag := "--bind"
		if m.ro {
			flag = "--ro-bind"
		}
		args = append(args, flag, m.src, m.dst)
	}
	if sc := c.SecurityContext; sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		args = append(args, "--remount-ro", "/")
	}
	return args
}

// install puts a binary into the sandbox's /herd-pod, readable by any user.
func install(src, dst string) error {
	if err := os.Link(src, dst); err != nil {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			return err
		}
	}
	return os.Chmod(dst, 0o755)
}

// forward serves Dir/run/<sock>, to which the helper forwards addr in the
// sandbox, by dialing addr on this machine.
func (p *Process) forward(addr, sock string) error {
	path := filepath.Join(p.run, sock)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o777); err != nil {
		return err
	}
	p.stopL = append(p.stopL, ln)
	go serveForward(ln, func() (net.Conn, error) { return net.Dial("tcp", addr) })
	return nil
}

// Port returns the container port number of a named port.
func (p *Process) Port(name string) int { return p.ports[name] }

// Client is an HTTP client whose connections reach the container's port.
func (p *Process) Client(port int) *http.Client {
	sock := filepath.Join(p.run, "port-"+strconv.Itoa(port)+".sock")
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
}

// Probe runs a container's HTTP probe once: nil when it passes.
func (p *Process) Probe(probe *corev1.Probe) error {
	if probe == nil || probe.HTTPGet == nil {
		return errors.New("no httpGet probe")
	}
	port := probe.HTTPGet.Port.IntValue()
	if probe.HTTPGet.Port.Type == 1 { // a port name
		port = p.ports[probe.HTTPGet.Port.StrVal]
	}
	resp, err := p.Client(port).Get("http://pod" + probe.HTTPGet.Path)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("%s: %s: %s", probe.HTTPGet.Path, resp.Status, body)
	}
	return nil
}

// Exited reports whether the container ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop asks the container to stop (SIGTERM, as the kubelet does) and waits
// for it, killing it after grace.
func (p *Process) Stop(grace time.Duration) error {
	defer func() {
		for _, l := range p.stopL {
			l.Close()
		}
	}()
	_ = p.stdin.Close() // the helper sends SIGTERM to the container
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("container %s did not stop within %s", p.opts.Container, grace)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) && ee.ExitCode() > 0 {
		return fmt.Errorf("container %s exited with %d", p.opts.Container, ee.ExitCode())
	}
	return nil
}
