// Package apply writes a rendered node configuration to disk and into the
// running kernel: atomic file writes with rollback copies, and live sysctls.
package apply

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"herd.dev/herd/schema"
)

// DefaultMode is the mode of a rendered file that names none.
const DefaultMode = 0o644

// Change is one file an Apply writes or removes.
type Change struct {
	Path    string            // absolute path as rendered, e.g. /etc/sysctl.d/50-herd.conf
	Apply   schema.Disruption // what taking the change on needs
	Removed bool              // a previous render wrote it, this one has no such file
}

// Classes returns the set of disruption classes of the changes.
func Classes(changes []Change) []schema.Disruption {
	var out []schema.Disruption
	for _, c := range changes {
		if !slices.Contains(out, c.Apply) {
			out = append(out, c.Apply)
		}
	}
	slices.Sort(out)
	return out
}

// Manifest records what Herd wrote: the render and every file of it.
type Manifest struct {
	Hash  string          `json:"hash"`
	Files []ManifestEntry `json:"files"`
}

// ManifestEntry is one file Herd wrote.
type ManifestEntry struct {
	Path   string            `json:"path"`
	Mode   int               `json:"mode"`
	SHA256 string            `json:"sha256"`
	Apply  schema.Disruption `json:"apply"`
}

// Files writes rendered files under Root and keeps its bookkeeping in
// StateDir: manifest.json (what the last Apply wrote) and previous/ (the
// version of every file that Apply replaced or removed, for Undo).
//
// Every write is atomic: a temporary file in the same directory, fsync,
// rename over the target, fsync of the directory. No access below Root
// follows a symbolic link (see tree): a link in a managed path, made by
// anyone but the agent, fails the Apply with a *SymlinkError naming it.
// Files is not safe for concurrent use.
type Files struct {
	Root     string
	StateDir string
	// AfterWrite, when set, runs after each file is written or removed; an
	// error aborts Apply there. Tests use it to stop half-way.
	AfterWrite func(path string) error
}

func (f *Files) manifestPath() string { return filepath.Join(f.StateDir, "manifest.json") }
func (f *Files) backupDir() string    { return filepath.Join(f.StateDir, "previous") }
func (f *Files) backupIndex() string  { return filepath.Join(f.backupDir(), "index.json") }

// backup is previous/index.json: the state before Apply started writing the
// render For.
type backup struct {
	For      string                 `json:"for"`      // hash being applied when the copies were taken
	Manifest Manifest               `json:"manifest"` // the manifest before
	Entries  map[string]backupEntry `json:"entries"`  // by path
}

type backupEntry struct {
	Existed bool   `json:"existed"`
	Mode    int    `json:"mode,omitempty"`
	Copy    string `json:"copy,omitempty"` // file name under previous/files
}

// Manifest reads the manifest of the last Apply; empty when there was none.
func (f *Files) Manifest() (Manifest, error) {
	var m Manifest
	err := readJSON(f.manifestPath(), "manifest", &m)
	return m, err
}

// CheckPath reports whether a rendered file may be written at p: one of the
// files Herd generates, or a path in the schema's allowlist. ParseRendered
// checks this already; the writer checks again before it touches the disk.
func CheckPath(p string) error {
	if schema.GeneratedPath(p) {
		return nil
	}
	if _, ok := schema.AllowedPath(p); !ok {
		return fmt.Errorf("%s is outside the file allowlist", p)
	}
	return nil
}

func modeOf(m int) fs.FileMode {
	if m == 0 {
		return DefaultMode
	}
	return fs.FileMode(m) & fs.ModePerm
}

func checkFiles(files []schema.RenderedFile) error {
	seen := map[string]bool{}
	for _, rf := range files {
		if err := CheckPath(rf.Path); err != nil {
			return err
		}
		if !schema.GeneratedPath(rf.Path) {
			if err := schema.CheckFile(rf.Path, rf.Content); err != nil {
				return err
			}
		}
		if seen[rf.Path] {
			return fmt.Errorf("%s is rendered twice", rf.Path)
		}
		seen[rf.Path] = true
		if rf.Mode < 0 || rf.Mode&^0o777 != 0 {
			return fmt.Errorf("%s: mode %#o is not a permission mode", rf.Path, rf.Mode)
		}
	}
	return nil
}

// Plan compares the rendered files with the disk and the manifest and
// returns what Apply would change, without writing anything.
func (f *Files) Plan(files []schema.RenderedFile) ([]Change, error) {
	if err := checkFiles(files); err != nil {
		return nil, fmt.Errorf("plan files: %w", err)
	}
	root, err := f.openRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	m, err := f.Manifest()
	if err != nil {
		return nil, err
	}
	return f.plan(root, files, m)
}

func (f *Files) plan(root *tree, files []schema.RenderedFile, m Manifest) ([]Change, error) {
	var changes []Change
	want := map[string]bool{}
	for _, rf := range files {
		want[rf.Path] = true
		same, err := sameOnDisk(root, rf.Path, []byte(rf.Content), modeOf(rf.Mode))
		if err != nil {
			return nil, fmt.Errorf("plan files: %w", err)
		}
		if !same {
			changes = append(changes, Change{Path: rf.Path, Apply: rf.Apply})
		}
	}
	for _, e := range m.Files {
		if want[e.Path] {
			continue
		}
		if err := CheckPath(e.Path); err != nil {
			return nil, fmt.Errorf("plan files: manifest %s: %w", f.manifestPath(), err)
		}
		if _, _, err := root.Lstat(rel(e.Path)); errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("plan files: %w", err)
		}
		changes = append(changes, Change{Path: e.Path, Apply: e.Apply, Removed: true})
	}
	return changes, nil
}

// Apply makes the files under Root exactly the rendered ones: it writes every
// file whose content or mode differs, removes the files a previous Apply
// wrote that the render no longer has, and records the render in the
// manifest. Before it replaces or removes a file it copies the version on disk
// to previous/, so Undo can restore it. It returns what it changed.
//
// Apply is idempotent and safe to repeat after a crash at any point: a second
// run for the same hash rewrites whatever is not yet right and keeps the
// copies the first run took (the state before either run).
func (f *Files) Apply(hash string, files []schema.RenderedFile) ([]Change, error) {
	if err := checkFiles(files); err != nil {
		return nil, fmt.Errorf("apply files: %w", err)
	}
	root, err := f.openRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	m, err := f.Manifest()
	if err != nil {
		return nil, err
	}
	changes, err := f.plan(root, files, m)
	if err != nil {
		return nil, err
	}
	if len(changes) > 0 {
		if err := f.saveBackups(root, hash, m, changes); err != nil {
			return nil, err
		}
	}
	byPath := map[string]schema.RenderedFile{}
	for _, rf := range files {
		byPath[rf.Path] = rf
	}
	for _, c := range changes {
		if c.Removed {
			if err := removeSynced(root, rel(c.Path)); err != nil {
				return nil, fmt.Errorf("apply files: remove %s: %w", c.Path, err)
			}
		} else {
			rf := byPath[c.Path]
			if err := writeAtomic(root, rel(c.Path), []byte(rf.Content), modeOf(rf.Mode)); err != nil {
				return nil, fmt.Errorf("apply files: write %s: %w", c.Path, err)
			}
		}
		if f.AfterWrite != nil {
			if err := f.AfterWrite(c.Path); err != nil {
				return nil, err
			}
		}
	}
	nm := Manifest{Hash: hash, Files: make([]ManifestEntry, 0, len(files))}
	for _, rf := range files {
		sum := sha256.Sum256([]byte(rf.Content))
		nm.Files = append(nm.Files, ManifestEntry{Path: rf.Path, Mode: int(modeOf(rf.Mode)), SHA256: hex.EncodeToString(sum[:]), Apply: rf.Apply})
	}
	if len(changes) > 0 || m.Hash != hash || !slices.Equal(m.Files, nm.Files) {
		if err := writeJSON(f.manifestPath(), nm); err != nil {
			return nil, fmt.Errorf("apply files: write manifest: %w", err)
		}
	}
	return changes, nil
}

// saveBackups copies the on-disk version of every changed file to
// previous/ before anything is overwritten. Copies taken by an earlier,
// interrupted Apply of the same hash are kept: they hold the state before it.
func (f *Files) saveBackups(root *tree, hash string, m Manifest, changes []Change) error {
	b, err := f.readBackup()
	if err != nil {
		return err
	}
	if b.For != hash {
		if err := os.RemoveAll(f.backupDir()); err != nil {
			return fmt.Errorf("apply files: clear previous versions: %w", err)
		}
		b = backup{For: hash, Manifest: m, Entries: map[string]backupEntry{}}
	}
	copies := filepath.Join(f.backupDir(), "files")
	if err := os.MkdirAll(copies, 0o700); err != nil {
		return fmt.Errorf("apply files: %w", err)
	}
	added := false
	for _, c := range changes {
		if _, ok := b.Entries[c.Path]; ok {
			continue
		}
		added = true
		data, perm, err := root.ReadFile(rel(c.Path))
		if errors.Is(err, os.ErrNotExist) {
			b.Entries[c.Path] = backupEntry{}
			continue
		}
		if err != nil {
			return fmt.Errorf("apply files: keep previous %s: %w", c.Path, err)
		}
		sum := sha256.Sum256([]byte(c.Path))
		name := hex.EncodeToString(sum[:16])
		if err := writeFileSynced(filepath.Join(copies, name), data, 0o600); err != nil {
			return fmt.Errorf("apply files: keep previous %s: %w", c.Path, err)
		}
		b.Entries[c.Path] = backupEntry{Existed: true, Mode: int(perm), Copy: name}
	}
	if !added {
		return nil
	}
	if err := writeJSON(f.backupIndex(), b); err != nil {
		return fmt.Errorf("apply files: keep previous versions: %w", err)
	}
	return nil
}

func (f *Files) readBackup() (backup, error) {
	var b backup
	err := readJSON(f.backupIndex(), "previous versions", &b)
	return b, err
}

// Previous returns the hash of the render the kept copies belong to (the
// manifest before the last Apply that changed something) and whether there
// are copies at all.
func (f *Files) Previous() (string, bool, error) {
	b, err := f.readBackup()
	if err != nil {
		return "", false, err
	}
	return b.Manifest.Hash, b.For != "", nil
}

// Undo restores every file the last changing Apply replaced or removed to
// the version kept in previous/, removes the files it created, and restores
// the manifest from before. It returns what it changed. Undo is idempotent;
// without copies it does nothing.
func (f *Files) Undo() ([]Change, error) {
	b, err := f.readBackup()
	if err != nil {
		return nil, err
	}
	if b.For == "" {
		return nil, nil
	}
	root, err := f.openRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	paths := make([]string, 0, len(b.Entries))
	for p := range b.Entries {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	var changes []Change
	for _, p := range paths {
		if err := CheckPath(p); err != nil {
			return nil, fmt.Errorf("undo: %s: %w", f.backupIndex(), err)
		}
		e := b.Entries[p]
		apply := disruptionOf(p, b.Manifest)
		if !e.Existed {
			if _, _, err := root.Lstat(rel(p)); errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err := removeSynced(root, rel(p)); err != nil {
				return nil, fmt.Errorf("undo: remove %s: %w", p, err)
			}
			changes = append(changes, Change{Path: p, Apply: apply, Removed: true})
			continue
		}
		data, err := os.ReadFile(filepath.Join(f.backupDir(), "files", e.Copy))
		if err != nil {
			return nil, fmt.Errorf("undo: %s: %w", p, err)
		}
		mode := fs.FileMode(e.Mode)
		if same, err := sameOnDisk(root, p, data, mode); err != nil {
			return nil, fmt.Errorf("undo: %w", err)
		} else if same {
			continue
		}
		if err := writeAtomic(root, rel(p), data, mode); err != nil {
			return nil, fmt.Errorf("undo: restore %s: %w", p, err)
		}
		changes = append(changes, Change{Path: p, Apply: apply})
	}
	if err := writeJSON(f.manifestPath(), b.Manifest); err != nil {
		return nil, fmt.Errorf("undo: write manifest: %w", err)
	}
	return changes, nil
}

// disruptionOf is the class of a restored file: from the manifest that
// wrote it, or the allowlist rule of its path.
func disruptionOf(p string, m Manifest) schema.Disruption {
	for _, e := range m.Files {
		if e.Path == p {
			return e.Apply
		}
	}
	switch p {
	case schema.KubeletDropInPath:
		return schema.DisruptionRestartKubelet
	case schema.ContainerdDropInPath:
		return schema.DisruptionRestartContainerd
	}
	if r, ok := schema.AllowedPath(p); ok {
		return r.Apply
	}
	return schema.DisruptionNone
}

func (f *Files) openRoot() (*tree, error) {
	if f.Root == "" || f.StateDir == "" {
		return nil, errors.New("apply files: Root and StateDir are required")
	}
	root, err := openTree(f.Root)
	if err != nil {
		return nil, fmt.Errorf("apply files: open root: %w", err)
	}
	return root, nil
}

// rel turns an absolute rendered path into a name relative to the root.
func rel(p string) string { return strings.TrimPrefix(path.Clean(p), "/") }

// sameOnDisk reports whether the regular file at p has exactly data and mode.
func sameOnDisk(root *tree, p string, data []byte, mode fs.FileMode) (bool, error) {
	m, size, err := root.Lstat(rel(p))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !m.IsRegular() || m.Perm() != mode || size != int64(len(data)) {
		return false, nil
	}
	have, _, err := root.ReadFile(rel(p))
	if err != nil {
		return false, err
	}
	return bytes.Equal(have, data), nil
}

// writeAtomic replaces name under root with data: a temporary file in the
// same directory, fsync, rename, fsync of the directory.
func writeAtomic(root *tree, name string, data []byte, mode fs.FileMode) error {
	dir := path.Dir(name)
	if err := root.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := removeTemps(root, name); err != nil {
		return err
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := path.Join(dir, "."+path.Base(name)+".herd-tmp-"+hex.EncodeToString(rnd[:]))
	fh, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	cleanup := func() { _ = root.Remove(tmp) }
	if _, err := fh.Write(data); err != nil {
		fh.Close()
		cleanup()
		return err
	}
	if err := fh.Chmod(mode); err != nil { // the umask may have narrowed it
		fh.Close()
		cleanup()
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		cleanup()
		return err
	}
	if err := fh.Close(); err != nil {
		cleanup()
		return err
	}
	if err := root.Rename(tmp, name); err != nil {
		cleanup()
		return err
	}
	return syncDir(root, dir)
}

// removeTemps removes temporary files a crashed writeAtomic of name left.
func removeTemps(root *tree, name string) error {
	entries, err := root.ReadDirNames(path.Dir(name))
	if err != nil {
		return err
	}
	prefix := "." + path.Base(name) + ".herd-tmp-"
	for _, e := range entries {
		if strings.HasPrefix(e, prefix) {
			if err := root.Remove(path.Join(path.Dir(name), e)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

func removeSynced(root *tree, name string) error {
	if err := root.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return syncDir(root, path.Dir(name))
}

func syncDir(root *tree, dir string) error { return root.SyncDir(dir) }

// writeFileSynced writes a state file atomically (outside the root).
func writeFileSynced(p string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	root, err := openTree(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return writeAtomic(root, filepath.Base(p), data, mode)
}

// WriteState writes v as JSON to the state file p atomically.
func WriteState(p string, v any) error { return writeJSON(p, v) }

// readJSON decodes the JSON file p into v; a missing file leaves v as it
// is. what names the file in errors.
func readJSON(p, what string, v any) error {
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", what, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("read %s %s: %w", what, p, err)
	}
	return nil
}

func writeJSON(p string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileSynced(p, append(data, '\n'), 0o600)
}
