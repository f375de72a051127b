package monitor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"herd.dev/herd/bpf/programs"
)

// OOMKill is one process the OOM killer chose.
type OOMKill struct {
	// Time is when the monitor read the event (within milliseconds of the kill).
	Time     time.Time `json:"time"`
	Victim   Labels    `json:"victim"`
	CgroupID uint64    `json:"cgroupID"`
	PID      uint32    `json:"pid"`
	UID      uint32    `json:"uid"`
	Command  string    `json:"command"`
}

// oomReader reads victims from the ring buffer and keeps the latest.
type oomReader struct {
	rd    *ringbuf.Reader
	names *namer
	keep  int

	mu     sync.Mutex
	recent []OOMKill // oldest first
}

func newOOMReader(rd *ringbuf.Reader, names *namer, keep int) *oomReader {
	return &oomReader{rd: rd, names: names, keep: keep}
}

// run reads until the reader is closed. The victim's cgroup is named at
// once: its container is often removed right after the kill.
func (o *oomReader) run() {
	var rec ringbuf.Record
	for {
		if err := o.rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		var e programs.OomkillOomKill
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e); err != nil {
			continue
		}
		victim, _ := o.names.name(e.CgroupId)
		o.add(OOMKill{
			Time: time.Now(), Victim: victim, CgroupID: e.CgroupId,
			PID: e.Pid, UID: e.Uid, Command: comm(e.Comm[:]),
		})
	}
}

func (o *oomReader) add(k OOMKill) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.recent = append(o.recent, k)
	if len(o.recent) > o.keep {
		o.recent = o.recent[len(o.recent)-o.keep:]
	}
}

// latest returns up to n kills, the newest first.
func (o *oomReader) latest(n int) []OOMKill {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]OOMKill, 0, min(n, len(o.recent)))
	for i := len(o.recent) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, o.recent[i])
	}
	return out
}

func (o *oomReader) close() { o.rd.Close() }

func comm(c []int8) string {
	b := make([]byte, 0, len(c))
	for _, ch := range c {
		if ch == 0 {
			break
		}
		b = append(b, byte(ch))
	}
	return string(b)
}
