package fsm

import (
	"slices"
	"time"

	"herd.dev/herd/schema"
)

// Phase is how far the journal's change got.
type Phase string

// Journal phases.
const (
	PhaseNone   Phase = ""       // nothing written yet for the change
	PhaseFiles  Phase = "files"  // files being written (rewrite them all on restart)
	PhaseStaged Phase = "staged" // files written, the OS commit deployed for the next boot
	PhaseReboot Phase = "reboot" // a reboot was requested during boot BootID
	PhaseDone   Phase = "done"   // the change is complete: Applied == Config
)

// Journal is the agent's memory across restarts and reboots. The executor
// writes it (atomically) whenever Step changed it, before it carries out
// the action Step returned.
type Journal struct {
	// Applied is the config hash last applied completely (files, sysctls,
	// restarts, and the reboot it needed): the current-config annotation.
	Applied string `json:"applied,omitempty"`

	// The change in progress, or the last one finished or refused.
	Config     string   `json:"config,omitempty"`
	OS         string   `json:"os,omitempty"`
	KernelArgs []string `json:"kernelArgs,omitempty"`
	Phase      Phase    `json:"step,omitempty"`
	// Started is when the agent took the change on: the apply duration
	// runs from here to the change's end, across its reboot.
	Started time.Time `json:"started,omitzero"`
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
	Refused *Refused `json:"refused,omitempty"`

	// Pending are the disruptions of files written but not yet taken on:
	// services to restart, or a reboot. Any reboot takes them all on.
	Pending []schema.Disruption `json:"pending,omitempty"`
	// BootID is the boot the journal was written in; a different boot ID at
	// start means the node rebooted since.
	BootID string `json:"bootID,omitempty"`
}

// Refused is a refused desired state: the raw annotations, and why.
type Refused struct {
	Config  string `json:"config"`
	OS      string `json:"os,omitempty"`
	Message string `json:"message"`
}

// Equal reports whether two journals say the same.
func (j Journal) Equal(o Journal) bool {
	return j.Applied == o.Applied && j.Config == o.Config && j.OS == o.OS &&
		slices.Equal(j.KernelArgs, o.KernelArgs) && j.Phase == o.Phase && j.Started.Equal(o.Started) &&
		j.Pulled == o.Pulled && j.Deployed == o.Deployed && j.SameCommit == o.SameCommit &&
		j.Prestaged == o.Prestaged && j.OSPulled == o.OSPulled && j.PrePulled == o.PrePulled &&
		(j.Refused == nil) == (o.Refused == nil) && (j.Refused == nil || *j.Refused == *o.Refused) &&
		slices.Equal(j.Pending, o.Pending) && j.BootID == o.BootID
}

// Clone returns a copy that shares nothing with j.
func (j Journal) Clone() Journal {
	j.KernelArgs = slices.Clone(j.KernelArgs)
	j.Pending = slices.Clone(j.Pending)
	if j.Refused != nil {
		r := *j.Refused
		j.Refused = &r
	}
	return j
}

// is reports whether the journal's change is the given one.
func (j *Journal) is(config, commit string, kargs []string) bool {
	return j.Config == config && j.OS == commit && slices.Equal(j.KernelArgs, kargs)
}

func (j *Journal) addPending(ds ...schema.Disruption) {
	for _, d := range ds {
		if d != schema.DisruptionNone && !slices.Contains(j.Pending, d) {
			j.Pending = append(j.Pending, d)
		}
	}
	slices.Sort(j.Pending)
}

func (j *Journal) dropPending(d schema.Disruption) {
	j.Pending = slices.DeleteFunc(j.Pending, func(p schema.Disruption) bool { return p == d })
	if len(j.Pending) == 0 {
		j.Pending = nil
	}
}

// deployedHow says how the change's commit got deployed, when that was
// without a pull; "" otherwise.
func (j *Journal) deployedHow() string {
	switch {
	case !j.Deployed || j.Pulled:
		return ""
	case j.SameCommit:
		return "same commit, new kernel arguments: no pull"
	case j.Prestaged:
		return "commit pre-staged: no pull"
	default:
		return "commit already on disk: rollback fast path, no pull"
	}
}
