package sandbox

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"herd.dev/herd/schema/loader"
)

// serve is the child: it reads one request, limits itself, evaluates and
// writes one response. Whatever ends it first (the evaluation, the memory
// watchdog, the CPU limit's signal) writes the only response.
func serve(stdin io.Reader, stdout io.Writer) int {
	var req request
	if err := json.NewDecoder(io.LimitReader(stdin, 1<<30)).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox: read request:", err)
		return 2
	}
	b := req.Budget.orDefault()
	var once sync.Once
	respond := func(r response) {
		once.Do(func() {
			out, err := json.Marshal(r)
			if err != nil {
				out, _ = json.Marshal(response{Error: "sandbox: encode response: " + err.Error()})
			}
			_, _ = stdout.Write(out)
			os.Exit(0)
		})
	}
	if err := limit(b); err != nil {
		respond(response{Error: "sandbox: " + err.Error()})
	}
	go watchCPU(b, respond)
	go watchMemory(b, respond)

	respond(load(req, b.Budget))
	return 0
}

// load runs the loader, turning a panic inside CUE into a diagnostic.
func load(req request, b loader.Budget) (resp response) {
	defer func() {
		if p := recover(); p != nil {
			resp = response{Diagnostics: loader.Diagnostics{{Message: fmt.Sprintf("CUE failed on this fleet: %v", p)}}}
		}
	}()
	var res *loader.Result
	var err error
	if req.Dir != "" {
		res, err = b.LoadDir(req.Dir)
	} else {
		res, err = b.Load(req.Files)
	}
	if err != nil {
		if diags, ok := err.(loader.Diagnostics); ok {
			return response{Diagnostics: diags}
		}
		return response{Error: err.Error()}
	}
	return response{Result: res}
}

// threadReserve is address space kept for the threads the runtime starts
// after the limit is set. In a cgo build (go test's default) each is a
// pthread whose stack reserves 8 MiB, and glibc may reserve a 64 MiB
// malloc arena for it: under CPU contention the runtime starts more
// threads (a P handed off from each one blocked in a syscall), and a
// benign fleet died "out of memory" with 11 MiB of heap. The static
// binary's threads cost 16 KiB of Go memory each. Reserved address space
// is not memory: the heap stays below the budget (SetMemoryLimit), and
// what a fleet can allocate past it is bounded by this reserve.
const threadReserve = 256 << 20

// limit caps the process: its address space at what the Go runtime has
// reserved so far plus the memory budget and threadReserve (the runtime
// reserves about 1 GiB it never uses), its CPU time (SIGXCPU at the
// budget, SIGKILL two seconds later), and tells the garbage collector to
// stay below the budget.
func limit(b Budget) error {
	vm, err := vmSize()
	if err != nil {
		return err
	}
	as := uint64(vm) + uint64(b.Memory) + threadReserve
	if err := unix.Setrlimit(unix.RLIMIT_AS, &unix.Rlimit{Cur: as, Max: as}); err != nil {
		return fmt.Errorf("limit address space: %w", err)
	}
	secs := uint64((b.CPU + time.Second - 1) / time.Second)
	if err := unix.Setrlimit(unix.RLIMIT_CPU, &unix.Rlimit{Cur: secs, Max: secs + 2}); err != nil {
		return fmt.Errorf("limit CPU time: %w", err)
	}
	debug.SetMemoryLimit(b.Memory * 3 / 4)
	return nil
}

// watchCPU answers "over budget" when the kernel signals that the CPU time
// limit is reached.
func watchCPU(b Budget, respond func(response)) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGXCPU)
	<-ch
	respond(response{Diagnostics: overBudget(loader.LimitCPU, "evaluation used %s of CPU time, its budget", b.CPU)})
}

// watchMemory answers "over budget" as soon as the process's resident
// memory passes the budget.
func watchMemory(b Budget, respond func(response)) {
	page := int64(os.Getpagesize())
	for range time.Tick(5 * time.Millisecond) {
		rss, err := residentPages()
		if err != nil {
			continue
		}
		if rss*page > b.Memory {
			respond(response{Diagnostics: overBudget(loader.LimitMemory, "evaluation used more than its %d MiB of memory", b.Memory>>20)})
		}
	}
}

// residentPages reads the process's resident set from /proc/self/statm.
func residentPages() (int64, error) {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 {
		return 0, fmt.Errorf("statm: %q", data)
	}
	return strconv.ParseInt(fields[1], 10, 64)
}

// vmSize reads the process's address space size from /proc/self/status.
func vmSize() (int64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmSize:")); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(string(rest)), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmSize in /proc/self/status")
}
