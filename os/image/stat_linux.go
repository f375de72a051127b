package image

import (
	"io/fs"
	"syscall"
)

// statOwner returns a file's owner as Lstat read it.
func statOwner(st fs.FileInfo) (int, int) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Uid), int(s.Gid)
	}
	return 0, 0
}
