// Package healthcheck compiles and evaluates the CEL expressions of a
// pool's health checks over a node's conditions and labels.
package healthcheck

import (
	"fmt"

	"github.com/google/cel-go/cel"
)

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
	prg, err := env.Program(ast)
	if err != nil {
		return nil, err
	}
	return &CELCheck{src: src, prg: prg}, nil
}

// Eval runs the check on a node's conditions and labels. A condition that
// is missing, or a field that is, makes the check fail with that error.
func (c *CELCheck) Eval(conditions map[string]map[string]string, labels map[string]string) (bool, error) {
	if labels == nil {
		labels = map[string]string{}
	}
	out, _, err := c.prg.Eval(map[string]any{"conditions": conditions, "labels": labels})
	if err != nil {
		return false, fmt.Errorf("health check %q: %w", c.src, err)
	}
	ok, isBool := out.Value().(bool)
	return ok && isBool, nil
}

func (c *CELCheck) String() string { return c.src }
