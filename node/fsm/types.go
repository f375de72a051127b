package fsm

import (
	"fmt"
	"time"
	"unicode/utf8"

	"herd.dev/herd/schema"
)

// Key is a desired state: the controller's two annotations.
type Key struct{ Config, OS string }

// Node is the agent's Node as the executor saw it.
type Node struct {
	Desired Key
	// PrestageOS is the herd.dev/prestage-os annotation.
	PrestageOS string
	// Tainted says the Node carries the herd.dev/converging taint.
	Tainted bool
	// Reported is what the agent's annotations say now.
	Reported Report
	// ResourceVersion of the Node object as seen.
	ResourceVersion string
}

// Report is what the agent's annotations say. Empty values are absent
// annotations.
type Report struct {
	CurrentConfig string
	OSBooted      string
	OSStaged      string
	OSPulled      string
	State         schema.NodeState
	Message       string
}

// Annotations returns the report as annotation values.
func (r Report) Annotations() map[string]string {
	return map[string]string{
		schema.AnnotationCurrentConfig: r.CurrentConfig,
		schema.AnnotationOSBooted:      r.OSBooted,
		schema.AnnotationOSStaged:      r.OSStaged,
		schema.AnnotationOSPulled:      r.OSPulled,
		schema.AnnotationState:         string(r.State),
		schema.AnnotationMessage:       r.Message,
	}
}

// ReportOf reads a report back from a Node's annotations.
func ReportOf(ann map[string]string) Report {
	return Report{
		CurrentConfig: ann[schema.AnnotationCurrentConfig],
		OSBooted:      ann[schema.AnnotationOSBooted],
		OSStaged:      ann[schema.AnnotationOSStaged],
		OSPulled:      ann[schema.AnnotationOSPulled],
		State:         schema.NodeState(ann[schema.AnnotationState]),
		Message:       ann[schema.AnnotationMessage],
	}
}

// OS is the sysroot's state: the booted deployment and the default one
// (the one the next boot starts).
type OS struct {
	Booted  *Deployment // nil: no booted deployment
	Default *Deployment
}

// Deployment is one OSTree deployment as the state machine needs it.
type Deployment struct {
	ID         string // tells deployments of the same commit apart
	Checksum   string
	KernelArgs []string
	Staged     bool // finalized at shutdown (ostree admin deploy --stage)
}

// ActionKind names what the executor does next.
type ActionKind int

// Actions. Each but Wait and Resync ends in a Result the executor hands
// back to Step.
const (
	Wait         ActionKind = iota // nothing to do until the Node changes, or After passes
	Resync                         // look at the Node again at once (a pre-stage consumed its events)
	ReadOS                         // read the sysroot's status
	FetchRender                    // read and check the render Config names
	Inspect                        // check Render's sysctls against the kernel, compare its files with the disk
	Publish                        // patch the agent's annotations to Report
	Pull                           // make Commit present: pull it from OS's remote unless it is on disk
	WriteFiles                     // write Render's files (the journal names the change first)
	ApplySysctls                   // write Render's sysctls
	Restart                        // restart Unit
	Deploy                         // deploy Commit with KernelArgs as the next boot's default
	Reboot                         // request the reboot
	Cleanup                        // remove deployments ostree no longer needs, after a boot
	Untaint                        // remove the herd.dev/converging taint, if the Node still desires Config and Commit
	HasCommit                      // look whether Commit is on disk (pre-stage)
	Prestage                       // pull Commit from OS's remote ahead of the rollout, until the Node's desired state or prestage-os changes
)

var actionNames = [...]string{"wait", "resync", "read-os", "fetch-render", "inspect", "publish", "pull",
	"write-files", "apply-sysctls", "restart", "deploy", "reboot", "cleanup", "untaint", "has-commit", "prestage"}

func (k ActionKind) String() string {
	if k < 0 || int(k) >= len(actionNames) {
		return fmt.Sprintf("ActionKind(%d)", int(k))
	}
	return actionNames[k]
}

// Action is the next thing the executor does.
type Action struct {
	Kind ActionKind
	// After is how long a Wait lasts at most; 0 waits for the next change
	// of the Node only.
	After time.Duration
	// Config is the render's hash: FetchRender, WriteFiles; the desired
	// config the node is at: Untaint.
	Config string
	// Render is the fetched render: Inspect, WriteFiles, ApplySysctls.
	Render *schema.Rendered
	// Commit and KernelArgs: Pull, Deploy, HasCommit, Prestage; the
	// desired OS commit the node is at: Untaint.
	Commit     string
	KernelArgs []string
	// OS names the remote and ref to pull from: Pull, Prestage.
	OS schema.OSConfig
	// Unit is the systemd unit to restart.
	Unit string
	// Report is what to publish.
	Report Report
}

// Result is what an action came to.
type Result struct {
	Of  ActionKind
	Err error // a *Refusal when the node must refuse the desired state
	// OS: ReadOS.
	OS OS
	// Render: FetchRender.
	Render *schema.Rendered
	// Inspect: the disruption classes of the files that differ, how many
	// differ, and the hash of the render the files on disk were written for.
	Classes      []schema.Disruption
	Differ       int
	ManifestHash string
	// WriteFiles: the classes of the files written (or, on failure, of
	// those restored), and how many. ApplySysctls: Count sysctls written.
	Count int
	// Pull, Prestage: a pull ran (false: the commit was on disk).
	// HasCommit: the commit is on disk. Untaint: the taint was removed.
	Done bool
	// Prestage: stopped because the desired state or prestage-os changed.
	Interrupted bool
	// Took is how long Pull, Prestage or Deploy took.
	Took time.Duration
	// ResourceVersion of the Node after a Publish.
	ResourceVersion string
}

// Refusal is an error that leaves the node Degraded until the desired
// state changes.
type Refusal struct {
	Msg string
	Err error // the underlying error, if any
}

func (r *Refusal) Error() string { return r.Msg }
func (r *Refusal) Unwrap() error { return r.Err }

// Refusef returns a *Refusal.
func Refusef(format string, args ...any) error {
	return &Refusal{Msg: fmt.Sprintf(format, args...)}
}

// NoteKind names something that happened, for logs, metrics and test hooks.
type NoteKind int

// Notes.
const (
	NotePulled              NoteKind = iota // Commit pulled for a change (Took)
	NoteDeployed                            // Commit deployed with KernelArgs (Took); FastPath when it was on disk and not pre-staged; Msg says how, when without a pull
	NoteUnstaged                            // the staged deployment of an earlier target undone
	NoteStaged                              // the journal records the change's commit deployed for the next boot
	NoteFilesWritten                        // Count files written or removed
	NoteFilesRestored                       // writing failed, the previous files restored
	NoteSysctls                             // Count sysctls written (Err: then failed)
	NoteRestarted                           // Unit restarted, and the journal says so
	NoteRebooting                           // the reboot was requested
	NoteRebootAgain                         // the reboot requested did not come in time; requesting it again
	NoteApplied                             // Config reached (Took: since the change began)
	NoteRefused                             // the desired state refused (Msg)
	NoteRetry                               // an apply failed (Err), retried after Took (attempt Count)
	NoteState                               // the state reported changed (State, Msg)
	NoteUntainted                           // the converging taint removed
	NoteUntaintFailed                       // removing it failed (Err), retried after Took
	NotePrestaged                           // Commit pre-staged: pulled (Pulled) or found on disk
	NotePrestageFailed                      // pre-staging Commit failed (Err)
	NotePrestageInterrupted                 // the pre-stage of Commit stopped: the desired state or prestage-os changed
	NotePrestageHandled                     // the prestage-os commit is handled: on disk, pulled, or failed
	NoteReportFailed                        // publishing a report failed (Err); it is retried
	NoteWarning                             // something harmless failed (Msg, Err)
)

// Note is something that happened; fields as the kind says.
type Note struct {
	Kind       NoteKind
	Config     string
	Commit     string
	KernelArgs []string
	Unit       string
	State      schema.NodeState
	Msg        string
	Err        error
	Count      int
	Took       time.Duration
	Pulled     bool
	FastPath   bool
}

// Output is what Step returns besides the new state.
type Output struct {
	Action Action
	Notes  []Note
}

// maxMessage bounds the message annotation.
const maxMessage = 1024

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}
