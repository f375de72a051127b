package fsm_test

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"testing"
)

// allTransitions are the journal's transitions (see recordTransitions),
// every one of them caused by some test of this package. A phase goes
// from none to reboot only through files: a change's render differs from
// the files' manifest, so files are written (if only the manifest) before
// any reboot.
var allTransitions = []string{
	"phase none -> files",   // a change writes files (after its pull)
	"phase none -> done",    // a change back to what the disk holds
	"phase files -> reboot", // files written; the OS deployed, or a file needs a reboot
	"phase files -> done",   // files written, restarts done
	"phase files -> none",   // killed while writing; a new change that pulls first
	"phase reboot -> done",  // the boot came: the target runs (or fell back: refused)
	"phase reboot -> none",  // restarted before the reboot; a new change that pulls first
	"phase reboot -> files", // restarted before the reboot; a new change
	"phase done -> none",    // a new change that pulls first
	"phase done -> files",   // a new change
	"change: new",           // the journal takes a new change on
	"pulled: set",           // its commit pulled
	"deployed: set",         // its commit deployed
	"sameCommit: set",       // the booted commit with new kernel arguments
	"prestaged: set",        // its commit pre-staged
	"applied",               // a desired state reached
	"refused: recorded",     // a desired state refused
	"refused: cleared",      // the desired state changed
	"pending: add restart-kubelet",
	"pending: add restart-containerd",
	"pending: add reboot",
	"pending: drop restart-containerd", // restarted, kubelet next
	"pending: cleared at done",         // the last restart done
	"pending: cleared by a reboot",     // any reboot takes every pending disruption on
	"osPulled: set",                    // a pre-stage's commit on disk
	"osPulled: cleared",                // prestage-os changed or went
	"prePulled: set",                   // a pre-stage pulled
	"prePulled: taken on",              // a change deploys the pre-staged commit
	"bootID: this boot",                // written in this boot
}

func TestMain(m *testing.M) {
	code := m.Run()
	if os.Getenv("HERD_FSM_TRANSITIONS") != "" {
		for _, tr := range sortedTransitions() {
			fmt.Println(tr)
		}
	}
	// With every test run, every transition must have been seen, and
	// nothing else.
	if f := flag.Lookup("test.run"); code == 0 && f != nil && f.Value.String() == "" {
		seen := sortedTransitions()
		for _, tr := range allTransitions {
			if !slices.Contains(seen, tr) {
				fmt.Fprintf(os.Stderr, "FAIL: no test caused the journal transition %q\n", tr)
				code = 1
			}
		}
		for _, tr := range seen {
			if !slices.Contains(allTransitions, tr) {
				fmt.Fprintf(os.Stderr, "FAIL: the journal made the transition %q, which allTransitions lacks\n", tr)
				code = 1
			}
		}
	}
	os.Exit(code)
}
