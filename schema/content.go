package schema

import (
	"fmt"
	"strings"
)

// modprobeDirectives are the modprobe.d directives that run nothing. kmod
// also knows install and remove, whose arguments are shell commands run
// as root when a module loads or unloads; unknown ones are refused too.
var modprobeDirectives = map[string]bool{"options": true, "blacklist": true, "alias": true, "softdep": true, "weakdep": true}

// checkModprobe reads a modprobe.d file as kmod does (lines joined at a
// trailing backslash, "#" comments, words split on blanks) and allows only
// directives that run nothing.
func checkModprobe(content string) error {
	for _, line := range logicalLines(content) {
		fields := strings.Fields(line.text)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if !modprobeDirectives[fields[0]] {
			why := "unknown directive"
			if fields[0] == "install" || fields[0] == "remove" {
				why = "it runs a shell command when a module loads or unloads"
			}
			return fmt.Errorf("line %d: %q is not allowed: %s (allowed: alias, blacklist, options, softdep, weakdep)", line.number, fields[0], why)
		}
	}
	return nil
}

// checkModulesLoad allows what systemd-modules-load reads: one module name
// per line, comments starting with "#" or ";".
func checkModulesLoad(content string) error {
	for i, line := range strings.Split(content, "\n") {
		l := strings.TrimSpace(line)
		if l == "" || l[0] == '#' || l[0] == ';' {
			continue
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				return fmt.Errorf("line %d: %q is not a module name", i+1, l)
			}
		}
	}
	return nil
}

type logicalLine struct {
	number int // of its first physical line, 1-based
	text   string
}

// logicalLines joins lines ending in a backslash with the next one, as
// kmod's config reader does.
func logicalLines(content string) []logicalLine {
	var out []logicalLine
	var cur strings.Builder
	start := 0
	for i, l := range strings.Split(content, "\n") {
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(l, `\`) {
			cur.WriteString(strings.TrimSuffix(l, `\`))
			continue
		}
		cur.WriteString(l)
		out = append(out, logicalLine{number: start, text: cur.String()})
		cur.Reset()
	}
	if cur.Len() > 0 {
		out = append(out, logicalLine{number: start, text: cur.String()})
	}
	return out
}
