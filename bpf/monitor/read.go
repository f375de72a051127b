package monitor

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	"herd.dev/herd/bpf/programs"
)

// hist is a log2 histogram as the programs keep it (struct hist in
// bpf/programs/include/common.h): Slots[0] counts latencies under 1 µs,
// Slots[k] those in [2^(k-1), 2^k) µs, the last slot everything longer.
type hist = programs.RunqlatHist

// histSlots is HIST_SLOTS.
const histSlots = len(hist{}.Slots)

// snapshot is one read of every map.
type snapshot struct {
	at       time.Time
	runQueue map[uint64]hist // by cgroup id
	oomKills map[uint64]uint64
	retrans  map[uint64]uint64
	execs    map[uint64]uint64
	blockIO  map[uint32]hist // by device, major<<20 | minor
}

// read reads the maps of every loaded program, a batch at a time.
func (m *Monitor) read() (snapshot, error) {
	s := snapshot{at: time.Now()}
	var err error
	if lp := m.loaded[RunQueueLatency]; lp != nil {
		if s.runQueue, err = readMap[uint64, hist](lp.coll.Maps[programs.RunqlatMapRunqLatency]); err != nil {
			return s, err
		}
	}
	if lp := m.loaded[OOMKills]; lp != nil {
		if s.oomKills, err = readMap[uint64, uint64](lp.coll.Maps[programs.OomkillMapOomKills]); err != nil {
			return s, err
		}
	}
	if lp := m.loaded[TCPRetransmits]; lp != nil {
		if s.retrans, err = readMap[uint64, uint64](lp.coll.Maps[programs.TcpretransMapTcpRetransmits]); err != nil {
			return s, err
		}
	}
	if lp := m.loaded[Execs]; lp != nil {
		if s.execs, err = readMap[uint64, uint64](lp.coll.Maps[programs.ExecsMapExecs]); err != nil {
			return s, err
		}
	}
	if lp := m.loaded[BlockIOLatency]; lp != nil {
		if s.blockIO, err = readMap[uint32, hist](lp.coll.Maps[programs.BiolatencyMapBioLatency]); err != nil {
			return s, err
		}
	}
	return s, nil
}

const batchSize = 256

// readMap reads a hash map with batch lookups: one system call per
// batchSize entries.
func readMap[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	out := make(map[K]V)
	keys, vals := make([]K, batchSize), make([]V, batchSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read map %s: %w", m, err)
		}
	}
}

// evictDead deletes the entries of cgroups that no longer exist from the
// per-cgroup maps, and forgets their names. The maps are LRU, so they stay
// bounded without this; eviction frees the room sooner and keeps series of
// deleted containers from lingering.
func (m *Monitor) evictDead() error {
	maps := m.cgroupMaps()
	alive := map[uint64]bool{0: true}
	var errs []error
	for _, cm := range maps {
		ids, err := cgroupIDs(cm)
		if err != nil {
			errs = append(errs, err)
		}
		for _, id := range ids {
			ok, seen := alive[id]
			if !seen {
				ok = m.resolver.Alive(id)
				alive[id] = ok
			}
			if ok {
				continue
			}
			if err := cm.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("evict cgroup %d from %s: %w", id, cm, err))
			}
		}
	}
	for id, ok := range alive {
		if !ok {
			m.names.forget(id)
		}
	}
	return errors.Join(errs...)
}

func (m *Monitor) cgroupMaps() []*ebpf.Map {
	var maps []*ebpf.Map
	for _, p := range AllPrograms {
		lp := m.loaded[p]
		if lp == nil {
			continue
		}
		for _, name := range definitions[p].cgroupMaps {
			maps = append(maps, lp.coll.Maps[name])
		}
	}
	return maps
}

// cgroupIDs lists the keys of a per-cgroup map.
func cgroupIDs(m *ebpf.Map) ([]uint64, error) {
	var ids []uint64
	var key, next uint64
	var prev any // nil: start from the first key
	for {
		err := m.NextKey(prev, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return ids, nil
		}
		if err != nil {
			return ids, fmt.Errorf("keys of %s: %w", m, err)
		}
		ids = append(ids, next)
		key = next
		prev = &key
	}
}
