package main

import (
	"fmt"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/schema/sandbox"
)

// addBudgetFlags registers the evaluation budget's flags, each named after
// the limit it sets (loader.Limit), with sandbox.DefaultBudget's values.
func addBudgetFlags(fs *pflag.FlagSet, b *sandbox.Budget) {
	*b = sandbox.DefaultBudget
	fs.Var(&quantity{&b.Memory}, string(loader.LimitMemory), "memory the evaluation of a fleet may use (evaluated in a child process)")
	fs.DurationVar(&b.CPU, string(loader.LimitCPU), b.CPU, "CPU time the evaluation of a fleet may use")
	fs.DurationVar(&b.Timeout, string(loader.LimitTime), b.Timeout, "wall-clock time the evaluation of a fleet may take")
	fs.IntVar(&b.MaxDepth, string(loader.LimitDepth), b.MaxDepth, "nesting of braces, brackets, parentheses and chained labels in a CUE file")
	fs.IntVar(&b.MaxInstances, string(loader.LimitInstances), b.MaxInstances, "directories holding files of the fleet's package")
	fs.Var(&quantity{&b.MaxFileSize}, string(loader.LimitFileSize), "size of one CUE file")
	fs.Var(&quantity{&b.MaxTotalSize}, string(loader.LimitTotalSize), "size of all CUE files of a fleet")
	fs.IntVar(&b.MaxFiles, string(loader.LimitFiles), b.MaxFiles, "CUE files in a fleet")
	fs.IntVar(&b.MaxString, string(loader.LimitString), b.MaxString, "bytes in one string of the evaluated fleet")
}

// quantity is a byte count flag that takes Kubernetes quantities ("512Mi").
type quantity struct{ v *int64 }

func (q *quantity) String() string {
	if q.v == nil {
		return ""
	}
	return resource.NewQuantity(*q.v, resource.BinarySI).String()
}

func (q *quantity) Set(s string) error {
	v, err := resource.ParseQuantity(s)
	if err != nil || v.Sign() <= 0 {
		return fmt.Errorf("want a positive size such as 512Mi")
	}
	*q.v = v.Value()
	return nil
}

func (q *quantity) Type() string { return "size" }
