// Package image builds OSTree OS images from a Buildfile, a Dockerfile-like
// file of FROM, ARG, COPY, ADD, RUN, LABEL and IMAGE, and compares images.
package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// Op is a Buildfile instruction.
type Op int

// The instructions a Buildfile may hold.
const (
	OpFrom Op = iota + 1
	OpArg
	OpCopy
	OpAdd
	OpRun
	OpLabel
	OpImage
)

var opNames = map[string]Op{
	"FROM": OpFrom, "ARG": OpArg, "COPY": OpCopy, "ADD": OpAdd,
	"RUN": OpRun, "LABEL": OpLabel, "IMAGE": OpImage,
}

func (o Op) String() string {
	for name, op := range opNames {
		if op == o {
			return name
		}
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// allowedFlags are the --flags each instruction takes.
var allowedFlags = map[Op][]string{
	OpFrom: {"repo"},
	OpCopy: {"chmod", "chown"},
	OpAdd:  {"chmod", "chown"},
}

// Instruction is one parsed Buildfile line (continuations joined).
type Instruction struct {
	Op    Op
	Line  int               // first line, 1-based
	Args  []string          // words as written, not yet expanded
	Flags map[string]string // --name=value
	// Exec is set for RUN in exec form (a JSON array): Args are the
	// command and its arguments. In shell form Args[0] is the command line.
	Exec bool
}

// Buildfile is a parsed Buildfile.
type Buildfile struct {
	Name         string // file name used in messages
	Digest       string // "sha256:<hex>" of the file's bytes
	Instructions []Instruction
}

// ParseFile reads and parses the Buildfile at path.
func ParseFile(path string) (*Buildfile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read Buildfile: %w", err)
	}
	return Parse(path, data)
}

var argNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Parse parses a Buildfile with the Dockerfile parser (line continuations,
// comments, quoting and the escape directive behave as in a Dockerfile)
// and checks every instruction's form. Errors name the file and line.
func Parse(name string, data []byte) (*Buildfile, error) {
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	sum := sha256.Sum256(data)
	bf := &Buildfile{Name: name, Digest: "sha256:" + hex.EncodeToString(sum[:])}
	froms := 0
	for _, n := range res.AST.Children {
		bad := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: %s", name, n.StartLine, fmt.Sprintf(format, args...))
		}
		keyword := strings.ToUpper(n.Value)
		op, ok := opNames[keyword]
		if !ok {
			return nil, bad("%s is not a Buildfile instruction (FROM, ARG, COPY, ADD, RUN, LABEL, IMAGE)", keyword)
		}
		in := Instruction{Op: op, Line: n.StartLine, Flags: map[string]string{}}
		for _, f := range n.Flags {
			k, v, ok := strings.Cut(strings.TrimPrefix(f, "--"), "=")
			if !ok || !strings.HasPrefix(f, "--") || v == "" {
				return nil, bad("flag %q: want --name=value", f)
			}
			if !slices.Contains(allowedFlags[op], k) {
				return nil, bad("%s takes no flag --%s", keyword, k)
			}
			if _, dup := in.Flags[k]; dup {
				return nil, bad("flag --%s given twice", k)
			}
			in.Flags[k] = v
		}
		for a := n.Next; a != nil; a = a.Next {
			in.Args = append(in.Args, a.Value)
		}
		in.Exec = n.Attributes["json"]
		if op == OpImage { // not a Dockerfile instruction: the parser keeps no words
			_, rest, _ := strings.Cut(strings.TrimSpace(n.Original), " ")
			in.Args = strings.Fields(rest)
		}
		if err := checkArgs(&in, froms); err != nil {
			return nil, bad("%s: %v", keyword, err)
		}
		if op == OpFrom {
			froms++
		}
		bf.Instructions = append(bf.Instructions, in)
	}
	if froms == 0 {
		return nil, fmt.Errorf("%s: no FROM instruction", name)
	}
	return bf, nil
}

// checkArgs checks an instruction's words; froms is how many FROMs came before.
func checkArgs(in *Instruction, froms int) error {
	n := len(in.Args)
	switch in.Op {
	case OpFrom:
		if froms > 0 {
			return fmt.Errorf("only one FROM: a Buildfile builds one image")
		}
		if n != 1 {
			return fmt.Errorf("want FROM [--repo=PATH|URL] <ref|commit|scratch>")
		}
	case OpArg:
		if n != 1 {
			return fmt.Errorf("want ARG NAME[=default]")
		}
		k, _, _ := strings.Cut(in.Args[0], "=")
		if !argNameRE.MatchString(k) {
			return fmt.Errorf("invalid name %q", k)
		}
	case OpCopy, OpAdd:
		if n < 2 {
			return fmt.Errorf("want %s [--chmod=MODE] [--chown=UID:GID] <src>... <dest>", in.Op)
		}
		if in.Exec {
			return fmt.Errorf("the JSON form is not supported; list the paths")
		}
	case OpRun:
		if n == 0 || (!in.Exec && strings.TrimSpace(in.Args[0]) == "") {
			return fmt.Errorf("want RUN <command> or RUN [\"executable\", \"arg\"...]")
		}
	case OpLabel:
		if n == 0 || n%3 != 0 {
			return fmt.Errorf("want LABEL key=value...")
		}
	case OpImage:
		if n != 1 {
			return fmt.Errorf("want IMAGE <OCI archive in the build context>")
		}
	}
	if froms == 0 && in.Op != OpFrom && in.Op != OpArg {
		return fmt.Errorf("must come after FROM (only ARG may come before it)")
	}
	return nil
}
