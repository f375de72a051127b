package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"sigs.k8s.io/yaml"
)

// outputFlag is -o/--output of the commands that print for people and
// for programs: text (or another human format) and json or yaml.
type outputFlag struct {
	format  string
	formats []string
}

func (o *outputFlag) bind(cmd *cobra.Command, human ...string) {
	o.formats = append(append([]string{}, human...), "json", "yaml")
	cmd.Flags().StringVarP(&o.format, "output", "o", human[0], "output format: "+strings.Join(o.formats, ", "))
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if !slices.Contains(o.formats, o.format) {
			return usageError("--output %q: want %s", o.format, strings.Join(o.formats, ", "))
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
}

// structured reports whether the output is for programs.
func (o *outputFlag) structured() bool { return o.format == "json" || o.format == "yaml" }

// write prints v as JSON or YAML.
func (o *outputFlag) write(w io.Writer, v any) error {
	switch o.format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return fmt.Errorf("output %q is not structured", o.format)
}

// styled reports whether w may receive terminal escapes (colour, cursor
// moves): it is a terminal, NO_COLOR (no-color.org) is unset or empty, and
// TERM is not "dumb".
func styled(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && wantsStyle(term.IsTerminal(int(f.Fd())), os.Getenv("NO_COLOR"), os.Getenv("TERM"))
}

func wantsStyle(terminal bool, noColor, termName string) bool {
	return terminal && noColor == "" && termName != "dumb"
}
