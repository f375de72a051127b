package healthcheck

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

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

// An expression whose cost explodes is refused when it is compiled, and
// stopped at the cost limit when a node is checked.
func TestCELCostLimit(t *testing.T) {
	ten := "[0,1,2,3,4,5,6,7,8,9]"
	expr := "true"
	for _, v := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		expr = ten + ".all(" + v + ", " + expr + ")"
	}
	if _, err := CompileCEL(expr); !errors.Is(err, ErrTooCostly) {
		t.Fatalf("CompileCEL(%d-byte nested comprehension) = %v, want ErrTooCostly", len(expr), err)
	}
	// Cheap on the sample node, costly on a node with a huge label: the
	// evaluation stops at the limit.
	c, err := CompileCEL(`labels.all(k, labels.all(j, labels.all(i, k + j + i != "")))`)
	if err != nil {
		t.Fatal(err)
	}
	big := map[string]string{}
	for i := range 300 {
		big[fmt.Sprintf("l%03d", i)] = "v"
	}
	if _, err := c.Eval(nil, big); !errors.Is(err, ErrTooCostly) {
		t.Errorf("Eval on 300 labels = %v, want ErrTooCostly", err)
	}
	if _, err := CompileCEL(strings.Repeat(" ", MaxSource) + "true"); err == nil {
		t.Errorf("an expression over %d bytes compiled", MaxSource)
	}
}
