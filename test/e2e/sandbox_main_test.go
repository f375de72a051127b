package e2e

import (
	"os"
	"testing"

	"herd.dev/herd/schema/sandbox"
)

// TestMain lets this test binary evaluate fleets in a child process of
// itself, as the herd binary does, and builds herd for the tests once.
func TestMain(m *testing.M) {
	sandbox.Main()
	os.Exit(withHerdBinary(m))
}
