// Package programs holds the node monitor's eBPF programs, written in C,
// and the Go loaders bpf2go generated from them (objects committed).
package programs

// Regenerate with `make generate` (or `go generate ./bpf/...`). The
// compiler is pinned by name (clang-14 and llvm-strip-14, Debian 12's, with
// libbpf-dev's headers) and bpf2go by go.mod's tool line, so that a
// regeneration reproduces the committed objects byte for byte;
// TestObjectsUpToDate checks that they do.
//
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -target bpfel -type hist Runqlat runqlat.bpf.c -- -I include -Wall -Werror
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -target bpfel -type oom_kill Oomkill oomkill.bpf.c -- -I include -Wall -Werror
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -target bpfel Tcpretrans tcpretrans.bpf.c -- -I include -Wall -Werror
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -target bpfel Execs execs.bpf.c -- -I include -Wall -Werror
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -target bpfel Biolatency biolatency.bpf.c -- -I include -Wall -Werror
