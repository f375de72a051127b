package loader

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"cuelang.org/go/cue/scanner"
	"cuelang.org/go/cue/token"
)

// Limit names one limit of a Budget, as its command-line flag does.
type Limit string

// The limits of a Budget. The first ones are counted on the source before
// CUE evaluates anything; the last three are enforced on the process that
// evaluates (see package schema/sandbox).
const (
	LimitFileSize  Limit = "max-file-size"  // bytes in one CUE file
	LimitTotalSize Limit = "max-total-size" // bytes in all CUE files
	LimitFiles     Limit = "max-files"      // CUE files in a fleet
	LimitDepth     Limit = "max-depth"      // nesting of braces, brackets, parentheses and labels
	LimitInstances Limit = "max-instances"  // package directories evaluated
	LimitString    Limit = "max-string"     // bytes in one string of the evaluated fleet
	LimitMemory    Limit = "max-memory"     // memory of the evaluating process
	LimitCPU       Limit = "max-cpu"        // CPU time of the evaluating process
	LimitTime      Limit = "timeout"        // wall-clock time of an evaluation
	LimitOutput    Limit = "max-output"     // size of the evaluated fleet handed back
)

// Budget bounds what evaluating one fleet may cost. A fleet over budget is
// rejected like an invalid one, with a Diagnostic naming the limit.
type Budget struct {
	MaxFileSize  int64 // bytes in one CUE file
	MaxTotalSize int64 // bytes in all CUE files
	MaxFiles     int   // CUE files
	MaxDepth     int   // nesting: braces, brackets, parentheses and chained labels (a: b: c:)
	MaxInstances int   // directories holding files of the fleet's package
	MaxString    int   // bytes in one string of the evaluated fleet
}

// DefaultBudget is the budget of `herd validate`, `herd plan` and the
// controller unless flags say otherwise.
var DefaultBudget = Budget{
	MaxFileSize:  MaxFileSize,
	MaxTotalSize: MaxTotalSize,
	MaxFiles:     MaxFiles,
	MaxDepth:     MaxNesting,
	MaxInstances: 100,
	MaxString:    MaxFileContent,
}

// orDefault fills the limits left at zero from DefaultBudget.
func (b Budget) orDefault() Budget {
	d := DefaultBudget
	if b.MaxFileSize > 0 {
		d.MaxFileSize = b.MaxFileSize
	}
	if b.MaxTotalSize > 0 {
		d.MaxTotalSize = b.MaxTotalSize
	}
	if b.MaxFiles > 0 {
		d.MaxFiles = b.MaxFiles
	}
	if b.MaxDepth > 0 {
		d.MaxDepth = b.MaxDepth
	}
	if b.MaxInstances > 0 {
		d.MaxInstances = b.MaxInstances
	}
	if b.MaxString > 0 {
		d.MaxString = b.MaxString
	}
	return d
}

// overBudget is a Diagnostic for a limit of the budget.
func overBudget(limit Limit, file string, line, col int, format string, args ...any) Diagnostic {
	return Diagnostic{File: file, Line: line, Column: col, Limit: limit, Message: fmt.Sprintf(format, args...) + fmt.Sprintf(" (budget %s)", limit)}
}

// checkSizes applies the size and count limits to the files as given.
func (b Budget) checkSizes(files map[string][]byte) Diagnostics {
	var diags Diagnostics
	var total int64
	n := 0
	for _, name := range sortedKeys(files) {
		size := int64(len(files[name]))
		if size > b.MaxFileSize {
			diags = append(diags, overBudget(LimitFileSize, name, 0, 0, "file is %d bytes; the limit is %d", size, b.MaxFileSize))
		}
		total += size
		if strings.HasSuffix(name, ".cue") {
			n++
		}
	}
	if total > b.MaxTotalSize {
		diags = append(diags, overBudget(LimitTotalSize, "", 0, 0, "the fleet holds %d bytes of CUE; the limit is %d", total, b.MaxTotalSize))
	}
	if n > b.MaxFiles {
		diags = append(diags, overBudget(LimitFiles, "", 0, 0, "the fleet holds %d CUE files; the limit is %d", n, b.MaxFiles))
	}
	return diags
}

// checkDepth rejects a file nested deeper than MaxDepth before the parser
// sees it. Depth counts what makes CUE's parser and evaluator recurse:
// braces, brackets and parentheses, and each label of a chain (a: b: c: 1
// is three levels, like a: {b: {c: 1}}).
func (b Budget) checkDepth(name string, src []byte) (Diagnostic, bool) {
	var s scanner.Scanner
	file := token.NewFile(name, -1, len(src))
	s.Init(file, src, nil, 0)
	type bracket struct {
		depth  int  // before it opened
		interp bool // the parenthesis of a string interpolation
	}
	var open []bracket
	depth := 0
	interp := false // the next "(" opens an interpolation's expression
	deeper := func(pos token.Pos) (Diagnostic, bool) {
		if depth++; depth > b.MaxDepth {
			p := file.Position(pos)
			return overBudget(LimitDepth, name, p.Line, p.Column, "nested more than %d levels deep (braces, brackets, parentheses and chained labels)", b.MaxDepth), false
		}
		return Diagnostic{}, true
	}
	for {
		pos, tok, lit := s.Scan()
		switch tok {
		case token.EOF:
			return Diagnostic{}, true
		case token.INTERPOLATION:
			interp = strings.HasSuffix(lit, "(")
		case token.LBRACE, token.LBRACK, token.LPAREN:
			open = append(open, bracket{depth: depth, interp: tok == token.LPAREN && interp})
			interp = false
			if d, ok := deeper(pos); !ok {
				return d, false
			}
		case token.RBRACE, token.RBRACK, token.RPAREN:
			depth = 0
			if n := len(open); n > 0 {
				top := open[n-1]
				depth, open = top.depth, open[:n-1]
				if top.interp && tok == token.RPAREN {
					// As the parser does: the string goes on after ")".
					interp = strings.HasSuffix(s.ResumeInterpolation(), "(")
				}
			}
		case token.COLON:
			if d, ok := deeper(pos); !ok {
				return d, false
			}
		case token.COMMA: // also inserted at the end of a line
			depth = 0
			if n := len(open); n > 0 {
				depth = open[n-1].depth + 1
			}
		}
	}
}

// checkInstances counts the directories that hold files of the fleet's
// package: each is a CUE instance, evaluated with the root's files.
func (b Budget) checkInstances(pkgs map[string]string, pkg string) Diagnostics {
	var dirs []string
	for name, p := range pkgs {
		if p != pkg {
			continue
		}
		if d := path.Dir(name); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) <= b.MaxInstances {
		return nil
	}
	return Diagnostics{overBudget(LimitInstances, "", 0, 0, "the fleet's package %s spans %d directories, each a CUE instance; the limit is %d", pkg, len(dirs), b.MaxInstances)}
}

// OverBudget reports whether diagnostics reject a fleet for a limit of its
// budget, and which limit.
func (ds Diagnostics) OverBudget() (Limit, bool) {
	for _, d := range ds {
		if d.Limit != "" {
			return d.Limit, true
		}
	}
	return "", false
}
