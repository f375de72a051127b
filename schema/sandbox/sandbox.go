// Package sandbox evaluates a fleet in a child process of the running binary,
// under a memory, CPU and wall-clock budget, so no commit can crash or hang Herd.
package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"herd.dev/herd/schema/loader"
)

// childArg is the first argument that makes a binary serve one evaluation
// (see Main).
const childArg = "__herd-evaluate-fleet"

// MaxOutput bounds the evaluated fleet the child hands back.
const MaxOutput = 64 << 20

// Budget bounds one evaluation: the loader's limits on the source, and the
// process's memory, CPU time and wall-clock time.
type Budget struct {
	loader.Budget
	Memory  int64         // bytes of memory the evaluating process may use
	CPU     time.Duration // CPU time it may use
	Timeout time.Duration // wall-clock time it may take
}

// DefaultBudget is generous for any real fleet (the example evaluates in
// about 20 ms and 30 MiB) and small enough that the controller (limit 1 GiB
// in config/controller) survives any commit.
var DefaultBudget = Budget{Budget: loader.DefaultBudget, Memory: 512 << 20, CPU: 20 * time.Second, Timeout: 60 * time.Second}

// orDefault fills the limits left at zero from DefaultBudget.
func (b Budget) orDefault() Budget {
	d := DefaultBudget
	d.Budget = b.Budget
	if b.Memory > 0 {
		d.Memory = b.Memory
	}
	if b.CPU > 0 {
		d.CPU = b.CPU
	}
	if b.Timeout > 0 {
		d.Timeout = b.Timeout
	}
	return d
}

var served atomic.Bool

// Main makes this binary able to evaluate fleets in a child process of
// itself. Call it first in main (and in TestMain of tests that evaluate):
// when the binary was started as a child it serves the evaluation and
// exits; otherwise it returns.
func Main() {
	served.Store(true)
	if len(os.Args) > 1 && os.Args[1] == childArg {
		os.Exit(serve(os.Stdin, os.Stdout))
	}
}

// request is what the parent sends the child on its standard input.
type request struct {
	Dir    string            `json:"dir,omitempty"`
	Files  map[string][]byte `json:"files,omitempty"`
	Budget Budget            `json:"budget"`
}

// response is what the child writes on its standard output.
type response struct {
	Result      *loader.Result     `json:"result,omitempty"`
	Diagnostics loader.Diagnostics `json:"diagnostics,omitempty"`
	Error       string             `json:"error,omitempty"` // a failure that is not the fleet's fault
}

// LoadDir evaluates the fleet rooted at dir in a child process, within b.
// An invalid fleet, or one over budget, returns loader.Diagnostics (see
// Diagnostics.OverBudget); a cancelled ctx stops the child and returns
// ctx.Err().
func LoadDir(ctx context.Context, dir string, b Budget) (*loader.Result, error) {
	return evaluate(ctx, request{Dir: dir, Budget: b.orDefault()})
}

// Load evaluates a fleet from its files (as loader.Load takes them) in a
// child process, within b.
func Load(ctx context.Context, files map[string][]byte, b Budget) (*loader.Result, error) {
	return evaluate(ctx, request{Files: files, Budget: b.orDefault()})
}

func evaluate(ctx context.Context, req request) (*loader.Result, error) {
	if !served.Load() {
		return nil, errors.New("sandbox: this binary cannot evaluate in a child process: call sandbox.Main first in main (or TestMain)")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	in, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	var stdout capped
	stdout.max = MaxOutput
	stderr := capped{max: 8 << 10} // the runtime's "fatal error" line comes first
	cmd := exec.Command(exe, childArg)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "GOTRACEBACK=none")
	// The child dies with its parent, and never outlives an evaluation.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("sandbox: start evaluator: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(req.Budget.Timeout)
	defer timer.Stop()
	timedOut := false
	select {
	case err = <-done:
	case <-timer.C:
		_ = cmd.Process.Kill()
		err, timedOut = <-done, true
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return nil, ctx.Err()
	}
	b := req.Budget
	if timedOut {
		return nil, overBudget(loader.LimitTime, "evaluation took longer than %s", b.Timeout)
	}
	if stdout.over {
		return nil, overBudget(loader.LimitOutput, "the evaluated fleet is over %d MiB", MaxOutput>>20)
	}
	var resp response
	if jerr := json.Unmarshal(stdout.buf.Bytes(), &resp); jerr != nil || stdout.buf.Len() == 0 {
		return nil, died(cmd.ProcessState, err, b, time.Since(start), stderr.String())
	}
	switch {
	case resp.Error != "":
		return nil, errors.New(resp.Error)
	case len(resp.Diagnostics) > 0:
		return nil, resp.Diagnostics
	case resp.Result == nil:
		return nil, errors.New("sandbox: the evaluator returned nothing")
	}
	return resp.Result, nil
}

// died explains a child that ended without an answer. It reports a CPU
// overrun when it used its CPU time, and a memory overrun otherwise: the
// runtime dies when its address space limit is reached, and the kernel
// kills the largest process of a cgroup out of memory.
func died(ps *os.ProcessState, err error, b Budget, took time.Duration, stderr string) error {
	last := lastLine(stderr)
	if ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			if cpu >= b.CPU {
				return overBudget(loader.LimitCPU, "evaluation used %s of CPU time, its budget", b.CPU.Round(time.Millisecond))
			}
		}
	}
	msg := fmt.Sprintf("the evaluation died after %s within its %d MiB memory budget (%v)", took.Round(time.Millisecond), b.Memory>>20, err)
	if last != "" {
		msg += ": " + last
	}
	return overBudget(loader.LimitMemory, "%s", msg)
}

func overBudget(limit loader.Limit, format string, args ...any) loader.Diagnostics {
	return loader.Diagnostics{{Limit: limit, Message: fmt.Sprintf(format, args...) + fmt.Sprintf(" (budget %s)", limit)}}
}

// lastLine picks the line of the child's standard error that says why it
// died: the runtime's "fatal error" line when there is one, else the last.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for _, l := range lines {
		if strings.HasPrefix(l, "fatal error:") {
			return l
		}
	}
	return lines[len(lines)-1]
}

// capped is a buffer that keeps the first max bytes written to it.
type capped struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	n := len(p)
	if room := c.max - c.buf.Len(); len(p) > room {
		c.over = true
		p = p[:max(room, 0)]
	}
	c.buf.Write(p)
	return n, nil
}

func (c *capped) String() string { return c.buf.String() }
