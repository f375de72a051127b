// Command testenv runs a real Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager) on 127.0.0.1 for trying Herd by hand; it backs
// `make testenv`.
//
// It builds or reuses the binaries (see test/k8s/build.sh), starts the
// control plane, writes an admin kubeconfig to -kubeconfig, prints
//
//	export KUBECONFIG=<absolute path>
//
// on stdout, and runs until SIGINT or SIGTERM, when it stops the control
// plane and removes the kubeconfig. Progress and log locations go to stderr.
//
// Usage:
//
//	go run ./test/cmd/testenv [-kubeconfig .cache/testenv/kubeconfig] [-keep] [-v]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"herd.dev/herd/test/controlplane"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", filepath.Join(".cache", "testenv", "kubeconfig"), "where to write the admin kubeconfig")
	keep := flag.Bool("keep", false, "keep the control plane's run directory (data, certificates, logs) on exit")
	verbose := flag.Bool("v", false, "copy the control plane's logs to stderr")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", flag.Args())
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := controlplane.Options{KeepDir: *keep}
	if *verbose {
		opts.Stdout, opts.Stderr = os.Stderr, os.Stderr
	}
	started := time.Now()
	cp, err := controlplane.Start(ctx, opts)
	if err != nil {
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = cp.Stop()
		}
	}()

	path, err := filepath.Abs(*kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig path: %w", err)
	}
	data, err := os.ReadFile(cp.KubeconfigPath())
	if err != nil {
		return fmt.Errorf("read kubeconfig: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create kubeconfig directory: %w", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}

	fmt.Fprintf(os.Stderr, "testenv: control plane ready at %s in %v\n", cp.ServerURL(), time.Since(started).Round(time.Millisecond))
	fmt.Fprintf(os.Stderr, "testenv: run directory %s\n", cp.Dir())
	logs := cp.Logs()
	names := make([]string, 0, len(logs))
	for name := range logs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(os.Stderr, "testenv: %s log: %s\n", name, logs[name])
	}
	fmt.Fprintf(os.Stderr, "testenv: kubectl: %s\n", cp.KubectlPath())
	fmt.Fprintln(os.Stderr, "testenv: press Ctrl-C to stop")
	fmt.Printf("export KUBECONFIG=%s\n", path)

	<-ctx.Done()
	stop() // a second Ctrl-C kills testenv outright; Pdeathsig takes the children along
	fmt.Fprintln(os.Stderr, "testenv: stopping")
	stopped = true
	err = cp.Stop()
	if rmErr := os.Remove(path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("remove kubeconfig: %w", rmErr))
	}
	if *keep {
		fmt.Fprintf(os.Stderr, "testenv: kept %s\n", cp.Dir())
	}
	return err
}
