package containerd

import "testing"

// StartTest starts containerd for t and stops it when t ends, logging the
// tail of its log first if t failed. A containerd that cannot start fails t
// with the reason: the tests need it, and CI runs them as root with the
// Debian packages installed by `make deps`.
func StartTest(t testing.TB, opts Options) *Containerd {
	t.Helper()
	c, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (%s):\n%s", c.LogPath(), c.TailLog(40))
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
	})
	return c
}
