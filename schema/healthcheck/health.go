// Package healthcheck compiles and evaluates the CEL expressions of a
// pool's health checks over a node's conditions and labels.
package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/cel-go/cel"
)

// Limits on a health check's CEL expression: its source, the cost of one
// evaluation in cel-go's cost units (a comparison is 1, a string operation
// about its length/10), and its wall-clock time. An expression over them is
// refused by herd validate, and stopped when a node is checked.
const (
	MaxSource = 4 << 10
	MaxCost   = 1_000_000
	MaxTime   = time.Second
)

// ErrTooCostly marks an expression that exceeds MaxCost or MaxTime.
var ErrTooCostly = errors.New("the CEL expression is too costly")

// celEnv is what a health check's CEL expression sees: the node's
// conditions by type, each {status, reason, message}, and its labels.
func celEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("conditions", cel.MapType(cel.StringType, cel.MapType(cel.StringType, cel.StringType))),
		cel.Variable("labels", cel.MapType(cel.StringType, cel.StringType)),
	)
}

// CELCheck is a compiled health-check expression.
type CELCheck struct {
	src string
	prg cel.Program
}

// CompileCEL compiles a health-check expression; it must be a bool.
func CompileCEL(src string) (*CELCheck, error) {
	if len(src) > MaxSource {
		return nil, fmt.Errorf("the CEL expression is %d bytes; the limit is %d", len(src), MaxSource)
	}
	env, err := celEnv()
	if err != nil {
		return nil, err
	}
	ast, iss := env.Compile(src)
	if iss.Err() != nil {
		return nil, fmt.Errorf("invalid CEL: %w", iss.Err())
	}
	if ast.OutputType() != cel.BoolType {
		return nil, fmt.Errorf("the CEL expression is a %s, not a bool", ast.OutputType())
	}
	// The cost limit stops an evaluation once it has cost MaxCost; the
	// interrupt checks lets a context stop comprehensions.
	prg, err := env.Program(ast, cel.CostLimit(MaxCost), cel.InterruptCheckFrequency(100))
	if err != nil {
		return nil, err
	}
	c := &CELCheck{src: src, prg: prg}
	// A run on a typical node: an expression whose cost explodes whatever
	// the input (nested comprehensions) is refused here, not on a node.
	if _, err := c.Eval(sampleConditions, sampleLabels); errors.Is(err, ErrTooCostly) {
		return nil, err
	}
	return c, nil
}

// A node as health checks usually see one, for the trial run.
var (
	sampleConditions = func() map[string]map[string]string {
		m := map[string]map[string]string{}
		for _, t := range []string{"Ready", "MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable", "KernelDeadlock", "ReadonlyFilesystem"} {
			m[t] = map[string]string{"status": "False", "reason": "Kubelet" + t, "message": "kubelet reports " + t + " as expected for a healthy node of the pool"}
		}
		m["Ready"]["status"] = "True"
		return m
	}()
	sampleLabels = func() map[string]string {
		m := map[string]string{"kubernetes.io/hostname": "node-000", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m6i.2xlarge", "topology.kubernetes.io/zone": "zone-a", "topology.kubernetes.io/region": "region-1"}
		for i := range 14 {
			m[fmt.Sprintf("example.com/label-%02d", i)] = "value"
		}
		return m
	}()
)

// Eval runs the check on a node's conditions and labels. A condition that
// is missing, or a field that is, makes the check fail with that error.
func (c *CELCheck) Eval(conditions map[string]map[string]string, labels map[string]string) (bool, error) {
	if labels == nil {
		labels = map[string]string{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), MaxTime)
	defer cancel()
	out, det, err := c.prg.ContextEval(ctx, map[string]any{"conditions": conditions, "labels": labels})
	if err != nil {
		if ctx.Err() != nil || det != nil && det.ActualCost() != nil && *det.ActualCost() > MaxCost {
			return false, fmt.Errorf("health check %q: %w (limits: cost %d, time %s): %v", c.src, ErrTooCostly, MaxCost, MaxTime, err)
		}
		return false, fmt.Errorf("health check %q: %w", c.src, err)
	}
	ok, isBool := out.Value().(bool)
	return ok && isBool, nil
}

func (c *CELCheck) String() string { return c.src }
