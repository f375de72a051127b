package source

import "path/filepath"

// GitDir is the bare repository the source keeps its copy of the remote in:
// the controller reads the fleet's earlier revisions from it.
func (s *Source) GitDir() string { return filepath.Join(s.opts.CacheDir, "repo.git") }
