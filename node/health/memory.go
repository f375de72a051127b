package health

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"herd.dev/herd/schema"
)

// Memory check defaults: the kernel's memory pressure file, and the share
// of the last minute in which every non-idle task stalled on memory ("full"
// avg60) from which a node is under memory pressure. systemd-oomd acts at
// 60 % over 30 s; Herd reports earlier, so that people see it first.
const (
	DefaultPSIPath      = "/proc/pressure/memory"
	DefaultFullAvg60Max = 20.0
)

// PSILine is one line of a pressure file: the share of time stalled,
// averaged over 10, 60 and 300 s (percent), and the total (µs).
type PSILine struct {
	Avg10  float64 `json:"avg10"`
	Avg60  float64 `json:"avg60"`
	Avg300 float64 `json:"avg300"`
	Total  uint64  `json:"total"`
}

// PSI is a pressure file: "some" task stalled, and "full": all stalled.
type PSI struct {
	Some PSILine `json:"some"`
	Full PSILine `json:"full"`
}

// ParsePSI parses a /proc/pressure file.
func ParsePSI(data []byte) (PSI, error) {
	var p PSI
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		var dst *PSILine
		switch fields[0] {
		case "some":
			dst = &p.Some
		case "full":
			dst = &p.Full
		default:
			return PSI{}, fmt.Errorf("pressure line %q: unknown kind %q", line, fields[0])
		}
		if err := parsePSILine(fields[1:], dst); err != nil {
			return PSI{}, fmt.Errorf("pressure line %q: %w", line, err)
		}
		seen++
	}
	if seen == 0 {
		return PSI{}, errors.New("empty pressure file")
	}
	return p, nil
}

func parsePSILine(fields []string, dst *PSILine) error {
	for _, f := range fields {
		k, v, found := strings.Cut(f, "=")
		if !found {
			return fmt.Errorf("field %q is not key=value", f)
		}
		var err error
		switch k {
		case "avg10":
			dst.Avg10, err = strconv.ParseFloat(v, 64)
		case "avg60":
			dst.Avg60, err = strconv.ParseFloat(v, 64)
		case "avg300":
			dst.Avg300, err = strconv.ParseFloat(v, 64)
		case "total":
			dst.Total, err = strconv.ParseUint(v, 10, 64)
		}
		if err != nil {
			return fmt.Errorf("field %q: %w", f, err)
		}
	}
	return nil
}

// ReadPSI reads and parses a pressure file. A kernel without PSI has no
// /proc/pressure; one booted with psi=0 fails the read (EOPNOTSUPP).
func ReadPSI(path string) (PSI, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return PSI{}, fmt.Errorf("read %s: %w", path, err)
	}
	p, err := ParsePSI(data)
	if err != nil {
		return PSI{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Memory checks memory pressure from PSI: full avg60 at or above
// FullAvg60Max percent is pressure.
type Memory struct {
	Path         string  // DefaultPSIPath when empty
	FullAvg60Max float64 // DefaultFullAvg60Max when zero
}

// Type is HerdMemoryPressure.
func (m *Memory) Type() schema.NodeConditionType { return schema.ConditionMemoryPressure }

// Check reads the pressure file once.
func (m *Memory) Check(_ context.Context, now time.Time) Result {
	path, max := m.Path, m.FullAvg60Max
	if path == "" {
		path = DefaultPSIPath
	}
	if max <= 0 {
		max = DefaultFullAvg60Max
	}
	p, err := ReadPSI(path)
	return memoryResult(p, err, max, now)
}

func memoryResult(p PSI, err error, max float64, now time.Time) Result {
	t := schema.ConditionMemoryPressure
	if err != nil {
		return unknown(t, schema.ReasonPSIUnavailable, now, fmt.Sprintf("no memory pressure information (kernel without PSI, or psi=0): %v", err))
	}
	msg := fmt.Sprintf("memory PSI full avg10=%.2f avg60=%.2f, some avg60=%.2f", p.Full.Avg10, p.Full.Avg60, p.Some.Avg60)
	if p.Full.Avg60 >= max {
		return problem(t, schema.ReasonMemoryStalled, now, fmt.Sprintf("%s: full avg60 at or above %.1f%%", msg, max))
	}
	return ok(t, schema.ReasonMemoryOK, now, msg)
}
