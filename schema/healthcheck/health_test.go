package healthcheck

import "testing"

func TestCELCheck(t *testing.T) {
	c, err := CompileCEL(`conditions.Ready.status == "True" && conditions.MemoryPressure.status != "True" && labels["herd.dev/pool"] == "general"`)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := c.Eval(map[string]map[string]string{"Ready": {"status": "True"}, "MemoryPressure": {"status": "False"}}, map[string]string{"herd.dev/pool": "general"})
	if !ok || err != nil {
		t.Errorf("healthy node: %v, %v", ok, err)
	}
	ok, _ = c.Eval(map[string]map[string]string{"Ready": {"status": "True"}, "MemoryPressure": {"status": "True"}}, map[string]string{"herd.dev/pool": "general"})
	if ok {
		t.Error("memory pressure passes the check")
	}
	if ok, err := c.Eval(map[string]map[string]string{"Ready": {"status": "True"}}, nil); ok || err == nil {
		t.Errorf("a missing condition: %v, %v; want a failed check with an error", ok, err)
	}
}
