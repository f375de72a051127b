package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"herd.dev/herd/node/apply"
	"herd.dev/herd/schema"
)

// Journal steps: how far the change to Config/OS/KernelArgs got.
const (
	stepFiles  = "files"  // files being written (rewrite them all on restart)
	stepStaged = "staged" // files written, the OS commit deployed for the next boot
	stepReboot = "reboot" // a reboot was requested during boot BootID
	stepDone   = "done"   // the change is complete: Applied == Config
)

// journal is the agent's memory across restarts and reboots, kept in
// <state-dir>/journal.json and rewritten atomically at every step.
type journal struct {
	// Applied is the config hash last applied completely (files, sysctls,
	// restarts, and the reboot it needed): the current-config annotation.
	Applied string `json:"applied,omitempty"`

	// The change in progress, or the last one finished or refused.
	Config     string   `json:"config,omitempty"`
	OS         string   `json:"os,omitempty"`
	KernelArgs []string `json:"kernelArgs,omitempty"`
	Step       string   `json:"step,omitempty"`
	// Pulled is set once the change pulled its commit; a change that
	// deploys without it took the rollback fast path.
	Pulled bool `json:"pulled,omitempty"`
	// Deployed is set once the change deployed its commit.
	Deployed bool `json:"deployed,omitempty"`
	// SameCommit is set when the change deploys the booted commit again,
	// with other kernel arguments.
	SameCommit bool `json:"sameCommit,omitempty"`
	// Prestaged is set when the change's commit was pulled by a pre-stage
	// (PrePulled): deployed without a pull, but not a rollback fast path.
	Prestaged bool `json:"prestaged,omitempty"`

	// OSPulled is the commit reported in the os-pulled annotation: the
	// prestage-os commit, found on disk or pulled ahead of the rollout.
	OSPulled string `json:"osPulled,omitempty"`
	// PrePulled is the commit a pre-stage pulled (it was not on disk),
	// until a change takes it on.
	PrePulled string `json:"prePulled,omitempty"`

	// Refused is the desired state the agent refused, and why. It stands
	// until the desired state changes, across restarts.
	Refused *refusedState `json:"refused,omitempty"`

	// Pending are the disruptions of files written but not yet taken on:
	// services to restart, or a reboot. Any reboot takes them all on.
	Pending []schema.Disruption `json:"pending,omitempty"`
	// BootID is the boot the journal was written in; a different boot ID at
	// start means the node rebooted since.
	BootID string `json:"bootID,omitempty"`
}

// refusedState is a refused desired state: the raw annotations.
type refusedState struct {
	Config  string `json:"config"`
	OS      string `json:"os,omitempty"`
	Message string `json:"message"`
}

// is reports whether the journal's change is the given one.
func (j *journal) is(config, commit string, kargs []string) bool {
	return j.Config == config && j.OS == commit && slices.Equal(j.KernelArgs, kargs)
}

func (j *journal) addPending(ds ...schema.Disruption) {
	for _, d := range ds {
		if d != schema.DisruptionNone && !slices.Contains(j.Pending, d) {
			j.Pending = append(j.Pending, d)
		}
	}
	slices.Sort(j.Pending)
}

func (j *journal) dropPending(d schema.Disruption) {
	j.Pending = slices.DeleteFunc(j.Pending, func(p schema.Disruption) bool { return p == d })
}

func journalPath(stateDir string) string { return filepath.Join(stateDir, "journal.json") }

func loadJournal(stateDir string) (journal, error) {
	var j journal
	data, err := os.ReadFile(journalPath(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return j, nil
	}
	if err != nil {
		return j, fmt.Errorf("read journal: %w", err)
	}
	if err := json.Unmarshal(data, &j); err != nil {
		return j, fmt.Errorf("read journal %s: %w", journalPath(stateDir), err)
	}
	return j, nil
}

func saveJournal(stateDir string, j journal) error {
	if err := apply.WriteState(journalPath(stateDir), j); err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	return nil
}
