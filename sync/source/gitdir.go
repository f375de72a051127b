package source

import "path/filepath"

// GitDir is the bare repository the source keeps its copy of the remote in.
func (s *Source) GitDir() string { return filepath.Join(s.opts.CacheDir, "repo.git") }

// ReadGitDir runs read on the cache while no fetch or repack writes to it:
// a repack deletes the packs a reader that opened the cache before may be
// reading, and a fetch writes new ones. The controller reads the fleet's
// earlier revisions this way; read must not keep the repository open after
// it returns.
func (s *Source) ReadGitDir(read func(gitDir string) error) error {
	s.storeMu.RLock()
	defer s.storeMu.RUnlock()
	return read(s.GitDir())
}
