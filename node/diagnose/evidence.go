// Package diagnose collects what `herd diagnose` shows about a node and
// carries it through the Kubernetes API: the agent fills NodeDiagnostics.
//
// It also captures evidence bundles: a bounded snapshot of the kernel log,
// kubelet and runtime health, the CRI sandboxes, PSI and disk use, taken
// before a destructive repair and shown by `herd diagnose` afterwards.
package diagnose

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"herd.dev/herd/node/cri"
	"herd.dev/herd/node/health"
)

// Evidence bounds.
const (
	// DefaultEvidenceLimit caps a bundle's JSON encoding.
	DefaultEvidenceLimit = 64 << 10
	// DefaultKernelLines is how many kernel log lines are kept at most.
	DefaultKernelLines = 200
	// maxKernelLine cuts a single kernel log line.
	maxKernelLine = 512
	// maxEvidenceFile bounds what LoadEvidence reads.
	maxEvidenceFile = 1 << 20
)

// Evidence is a bounded snapshot of a node's state, taken before a
// destructive repair. Its JSON encoding is at most the limit it was
// captured with; Truncated says what was cut to fit.
type Evidence struct {
	CapturedAt time.Time        `json:"capturedAt"`
	Reason     string           `json:"reason,omitempty"` // why it was captured
	KernelLog  []string         `json:"kernelLog,omitempty"`
	Health     []health.Result  `json:"health,omitempty"` // kubelet, runtime and the other checks
	Runtime    *cri.Status      `json:"runtime,omitempty"`
	Sandboxes  []cri.Sandbox    `json:"sandboxes,omitempty"`
	Memory     *health.PSI      `json:"memory,omitempty"`
	Disk       []health.FSUsage `json:"disk,omitempty"`
	Errors     []string         `json:"errors,omitempty"` // what could not be read
	Truncated  []string         `json:"truncated,omitempty"`
}

// CRI is what evidence reads of the container runtime.
type CRI interface {
	health.RuntimeStatus
	health.SandboxLister
}

// Sources say where evidence comes from; nil or empty parts are left out.
type Sources struct {
	KernelLog func(ctx context.Context, lines int) ([]string, error) // KernelLog when nil
	Checks    []health.Check
	CRI       CRI
	PSIPath   string   // health.DefaultPSIPath when empty
	DiskPaths []string // health.DefaultDiskPaths when empty
}

// Capture takes a bundle at now, for reason, within limit bytes of JSON
// (DefaultEvidenceLimit when <= 0).
func Capture(ctx context.Context, src Sources, reason string, now time.Time, limit int) *Evidence {
	e := &Evidence{CapturedAt: now.UTC(), Reason: reason}
	klog := src.KernelLog
	if klog == nil {
		klog = KernelLog
	}
	if lines, err := klog(ctx, DefaultKernelLines); err != nil {
		e.Errors = append(e.Errors, fmt.Sprintf("kernel log: %v", err))
	} else {
		e.KernelLog = lines
	}
	if len(src.Checks) > 0 {
		e.Health = health.Round(ctx, src.Checks, now, 0)
	}
	if src.CRI != nil {
		if st, err := src.CRI.Status(ctx); err != nil {
			e.Errors = append(e.Errors, fmt.Sprintf("runtime status: %v", err))
		} else {
			e.Runtime = &st
		}
		if sbs, err := src.CRI.Sandboxes(ctx); err != nil {
			e.Errors = append(e.Errors, fmt.Sprintf("sandboxes: %v", err))
		} else {
			e.Sandboxes = sbs
		}
	}
	psiPath := src.PSIPath
	if psiPath == "" {
		psiPath = health.DefaultPSIPath
	}
	if p, err := health.ReadPSI(psiPath); err != nil {
		e.Errors = append(e.Errors, err.Error())
	} else {
		e.Memory = &p
	}
	e.Disk, e.Errors = diskUsage(src.DiskPaths, e.Errors)
	e.fit(limit)
	return e
}

func diskUsage(paths, errs []string) ([]health.FSUsage, []string) {
	if len(paths) == 0 {
		paths = health.DefaultDiskPaths
	}
	var out []health.FSUsage
	for _, p := range paths {
		u, err := health.Statfs(p)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		out = append(out, u)
	}
	return out, errs
}

// Size is the length of the bundle's JSON encoding.
func (e *Evidence) Size() int { return size(e) }

// fit cuts the bundle until it encodes within limit, noting what it cut:
// first the oldest kernel log lines, then the oldest sandboxes, halving
// each time, then the errors, the check messages, and last the checks and
// disk use.
func (e *Evidence) fit(limit int) {
	if limit <= 0 {
		limit = DefaultEvidenceLimit
	}
	cutKernel, cutSandboxes, cutErrors := 0, 0, false
	note := func(extra ...string) {
		e.Truncated = nil
		if cutKernel > 0 {
			e.Truncated = append(e.Truncated, fmt.Sprintf("%d oldest kernel log lines", cutKernel))
		}
		if cutSandboxes > 0 {
			e.Truncated = append(e.Truncated, fmt.Sprintf("%d oldest sandboxes", cutSandboxes))
		}
		if cutErrors {
			e.Truncated = append(e.Truncated, "errors")
		}
		e.Truncated = append(e.Truncated, extra...)
	}
	for e.Size() > limit {
		switch {
		case len(e.KernelLog) > 0:
			n := (len(e.KernelLog) + 1) / 2
			cutKernel += n
			e.KernelLog = e.KernelLog[n:]
			note()
		case len(e.Sandboxes) > 0:
			n := (len(e.Sandboxes) + 1) / 2
			cutSandboxes += n
			e.Sandboxes = e.Sandboxes[n:]
			note()
		case len(e.Errors) > 0:
			e.Errors, cutErrors = nil, true
			note()
		default:
			for i := range e.Health {
				e.Health[i].Message = ""
			}
			note("health messages")
			if e.Size() > limit {
				e.Health, e.Disk = nil, nil
				note("health and disk")
			}
			return
		}
	}
}

// KernelLog returns the last lines of the kernel log, read from /dev/kmsg
// without blocking, or from `dmesg` when /dev/kmsg cannot be read.
func KernelLog(ctx context.Context, lines int) ([]string, error) {
	out, err := readKmsg("/dev/kmsg", lines)
	if err == nil {
		return out, nil
	}
	cmd := exec.CommandContext(ctx, "dmesg")
	b, derr := cmd.Output()
	if derr != nil {
		return nil, fmt.Errorf("/dev/kmsg: %v; dmesg: %w", err, derr)
	}
	return lastLines(strings.Split(strings.TrimRight(string(b), "\n"), "\n"), lines), nil
}

// readKmsg reads every record in the kernel's ring buffer (one per read)
// until none is left, and keeps the message of the last n.
func readKmsg(path string, n int) ([]string, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer syscall.Close(fd)
	ring := make([]string, 0, n)
	buf := make([]byte, 8192)
	for {
		m, err := syscall.Read(fd, buf)
		if errors.Is(err, syscall.EPIPE) {
			continue // overwritten while reading: go on with the next record
		}
		if errors.Is(err, syscall.EAGAIN) || m == 0 {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		line := kmsgMessage(string(buf[:m]))
		if len(ring) == n {
			ring = append(ring[:0], ring[1:]...)
		}
		ring = append(ring, line)
	}
	return ring, nil
}

// kmsgMessage turns a /dev/kmsg record ("6,339,5140900,-;text\n KEY=v")
// into "[seconds] text", cut to maxKernelLine.
func kmsgMessage(rec string) string {
	head, text, ok := strings.Cut(rec, ";")
	if !ok {
		return cut(strings.TrimSpace(rec))
	}
	text, _, _ = strings.Cut(text, "\n")
	fields := strings.Split(head, ",")
	if len(fields) >= 3 {
		var usec int64
		if _, err := fmt.Sscan(fields[2], &usec); err == nil {
			return cut(fmt.Sprintf("[%d.%06d] %s", usec/1e6, usec%1e6, text))
		}
	}
	return cut(text)
}

func cut(s string) string {
	if len(s) > maxKernelLine {
		return s[:maxKernelLine]
	}
	return s
}

func lastLines(lines []string, n int) []string {
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i := range lines {
		lines[i] = cut(lines[i])
	}
	return lines
}

// SaveEvidence writes the bundle to path atomically (temp file, fsync,
// rename), replacing the last one.
func SaveEvidence(path string, e *Evidence) error {
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode evidence: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save evidence: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".evidence-*")
	if err != nil {
		return fmt.Errorf("save evidence: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("save evidence to %s: %w", path, err)
	}
	return nil
}

// LoadEvidence reads the last bundle saved at path; nil when there is none.
func LoadEvidence(path string) (*Evidence, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load evidence: %w", err)
	}
	defer f.Close()
	var e Evidence
	// A saved bundle was capped when captured; this bounds a damaged file.
	if err := json.NewDecoder(io.LimitReader(f, maxEvidenceFile)).Decode(&e); err != nil {
		return nil, fmt.Errorf("load evidence from %s: %w", path, err)
	}
	return &e, nil
}
