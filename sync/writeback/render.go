package writeback

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"herd.dev/herd/schema"
)

const fileHeader = "# Written by Herd; changes are overwritten by the next status write.\n"

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func checkName(kind, name string) error {
	if !namePattern.MatchString(name) || len(name) > 200 {
		return fmt.Errorf("%s name %q: want letters, digits, '.', '_' or '-', not starting with a symbol", kind, name)
	}
	return nil
}

// normTime makes times deterministic in files: UTC, whole seconds.
func normTime(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Second)
}

// normalizePool returns a deep copy of p with sorted nodes, normalized
// times and bounded transitions.
func normalizePool(p PoolStatus) PoolStatus {
	if p.Batch != nil {
		b := *p.Batch
		p.Batch = &b
	}
	p.Nodes = slices.Clone(p.Nodes)
	for i := range p.Nodes {
		p.Nodes[i].Since = normTime(p.Nodes[i].Since)
	}
	slices.SortStableFunc(p.Nodes, func(a, b NodeStatus) int { return strings.Compare(a.Name, b.Name) })
	p.Transitions = slices.Clone(p.Transitions)
	for i := range p.Transitions {
		p.Transitions[i].Time = normTime(p.Transitions[i].Time)
	}
	if n := len(p.Transitions); n > MaxTransitions {
		p.Transitions = p.Transitions[n-MaxTransitions:]
	}
	p.Repairs = slices.Clone(p.Repairs)
	for i := range p.Repairs {
		p.Repairs[i].Time = normTime(p.Repairs[i].Time)
	}
	return p
}

func normalizeSource(s SourceStatus) SourceStatus {
	if s.UnavailableSince != nil {
		t := normTime(*s.UnavailableSince)
		s.UnavailableSince = &t
	}
	for _, r := range []**Revision{&s.LastFetched, &s.LastApplied} {
		if *r != nil {
			c := **r
			c.Time = normTime(c.Time)
			*r = &c
		}
	}
	if s.LastRejected != nil {
		c := *s.LastRejected
		c.Time = normTime(c.Time)
		s.LastRejected = &c
	}
	s.Errors = slices.Clone(s.Errors)
	return s
}

// marshalYAML renders v deterministically (struct field order, two-space
// indent) with Herd's header.
func marshalYAML(v any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(fileHeader)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("render yaml: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render yaml: %w", err)
	}
	return b.Bytes(), nil
}

// ParsePool reads a pool file written by the Writer.
func ParsePool(data []byte) (PoolStatus, error) {
	var p PoolStatus
	if err := yaml.Unmarshal(data, &p); err != nil {
		return p, fmt.Errorf("parse pool status: %w", err)
	}
	return p, nil
}

// ParseSource reads a source file written by the Writer.
func ParseSource(data []byte) (SourceStatus, error) {
	var s SourceStatus
	if err := yaml.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("parse source status: %w", err)
	}
	return s, nil
}

// summary is the commit message's first line, e.g.
// "general: 6/10 nodes at 7a3283c6 (batch 3/5); gpu: 2/2 nodes at 7a3283c6".
func summary(src *SourceStatus, pools []PoolStatus) string {
	const maxPools = 4
	var parts []string
	for i, p := range pools {
		if i == maxPools {
			parts = append(parts, fmt.Sprintf("and %d more pools", len(pools)-maxPools))
			break
		}
		s := fmt.Sprintf("%s: %d/%d nodes at %s", p.Name, p.Counts.Updated, p.Counts.Total, schema.Short(p.SpecRevision))
		if p.Batch != nil && p.Batch.Total > 0 {
			s += fmt.Sprintf(" (batch %d/%d)", p.Batch.Current, p.Batch.Total)
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 && src != nil {
		s := "source: " + src.Reason
		if src.LastApplied != nil {
			s += " at " + schema.Short(src.LastApplied.Commit)
		}
		if src.LastRejected != nil {
			s += ", rejected " + schema.Short(src.LastRejected.Commit)
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		parts = append(parts, "status")
	}
	return strings.Join(parts, "; ")
}

// specCommit is the fleet commit the status refers to: the source's applied
// revision, else the first pool's spec revision.
func specCommit(src *SourceStatus, pools []PoolStatus) string {
	if src != nil && src.LastApplied != nil && src.LastApplied.Commit != "" {
		return src.LastApplied.Commit
	}
	for _, p := range pools {
		if p.SpecRevision != "" {
			return p.SpecRevision
		}
	}
	return ""
}

// commitMessage is the summary line and the trailers.
func commitMessage(cluster, shard string, src *SourceStatus, pools []PoolStatus) string {
	var b strings.Builder
	b.WriteString(summary(src, pools))
	b.WriteString("\n\nHerd-Cluster: " + cluster + "\n")
	if shard != "" {
		b.WriteString("Herd-Shard: " + shard + "\n")
	}
	if sc := specCommit(src, pools); sc != "" {
		b.WriteString("Herd-Spec-Commit: " + sc + "\n")
	}
	return b.String()
}
