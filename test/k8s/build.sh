#!/bin/sh
# build.sh builds real Kubernetes control-plane binaries for Herd's
# integration tests from the Go module proxy, and reuses them when present.
#
#   kube-apiserver, kube-controller-manager, kubectl  from k8s.io/kubernetes
#                                                     (module ./, test/k8s)
#   etcd                                              from go.etcd.io/etcd/server/v3
#                                                     (module ../etcd, test/etcd)
#
# The binaries land in a directory keyed by version, laid out the way
# controller-runtime's envtest expects KUBEBUILDER_ASSETS:
#
#   <repo>/.cache/k8s/<k8s version>-etcd<etcd version>-<goos>-<goarch>/
#
# Only missing binaries are built, each is written under a temporary name and
# renamed into place (a killed build never leaves a half-written binary), and
# concurrent runs are serialised with flock(1) when it is available.
#
# Progress goes to stderr; the last line on stdout is the directory.
#
# Environment:
#   HERD_K8S_CACHE  root of the cache (default <repo>/.cache/k8s)
#   GO              go command to use (default go)
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
repo=$(CDPATH='' cd -- "$here/../.." && pwd)
etcd_mod="$repo/test/etcd"
GO=${GO:-go}

log() {
	printf 'k8s/build.sh: %s\n' "$*" >&2
}

# modversion GOMOD MODULE prints the version of MODULE required by GOMOD,
# whether the require is a single line or inside a block.
modversion() {
	awk -v m="$2" '
		$1 == "require" && $2 == m { print $3; exit }
		$1 == m && $2 ~ /^v/        { print $2; exit }
	' "$1"
}

k8s_version=$(modversion "$here/go.mod" k8s.io/kubernetes)
etcd_version=$(modversion "$etcd_mod/go.mod" go.etcd.io/etcd/server/v3)
if [ -z "$k8s_version" ] || [ -z "$etcd_version" ]; then
	log "cannot read versions from $here/go.mod and $etcd_mod/go.mod"
	exit 1
fi

goos=${GOOS:-}
goarch=${GOARCH:-}
if [ -z "$goos" ] || [ -z "$goarch" ]; then
	set -- $("$GO" env GOOS GOARCH)
	goos=${goos:-$1}
	goarch=${goarch:-$2}
fi

key="${k8s_version#v}-etcd${etcd_version#v}-$goos-$goarch"
dir="${HERD_K8S_CACHE:-$repo/.cache/k8s}/$key"

k8s_bins="kube-apiserver kube-controller-manager kubectl"
all_bins="etcd $k8s_bins"

# missing prints the binaries that are not yet in $dir.
missing() {
	for b in $all_bins; do
		[ -x "$dir/$b" ] || printf '%s\n' "$b"
	done
}

# Fast path: everything is already built.
if [ -z "$(missing)" ]; then
	log "using cached binaries in $dir"
	printf '%s\n' "$dir"
	exit 0
fi

mkdir -p "$dir"

if command -v flock >/dev/null 2>&1; then
	exec 9>"$dir/.lock"
	if ! flock -n 9; then
		log "another build holds $dir/.lock; waiting"
		flock 9
	fi
	# Holding the lock, no other build runs: temp dirs left by a build that
	# was killed outright (SIGKILL skips the trap below) are stale.
	rm -rf "$dir"/.build.*
	if [ -z "$(missing)" ]; then
		log "using binaries another run just built in $dir"
		printf '%s\n' "$dir"
		exit 0
	fi
fi

tmp=$(mktemp -d "$dir/.build.XXXXXX")
child=""
# On INT/TERM stop the running go build at once (a trap set for a signal
# interrupts `wait`, not a foreground command), then remove the temp dir.
interrupted() {
	if [ -n "$child" ]; then
		kill "$child" 2>/dev/null || true
		wait "$child" 2>/dev/null || true
	fi
	log "interrupted; nothing was installed from the unfinished build"
	exit "$1"
}
trap 'rm -rf "$tmp"' EXIT
trap 'interrupted 130' INT
trap 'interrupted 143' TERM

# Version stamps as Kubernetes' own build (hack/lib/version.sh) sets them, so
# /version and `kubectl version` report the real release instead of
# v0.0.0-master.
v=${k8s_version#v}
major=${v%%.*}
minor=${v#*.}
minor=${minor%%.*}
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags="$k8s_ldflags -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	k8s_ldflags="$k8s_ldflags -X $pkg.gitVersion=$k8s_version -X $pkg.gitTreeState=clean"
done

# gobuild MODDIR LDFLAGS OUT PKG... builds PKGs of the module in MODDIR to OUT
# (a file, or a directory ending in / for several packages).
gobuild() {
	moddir=$1
	extra=$2
	out=$3
	shift 3
	(
		cd "$moddir"
		exec env GOWORK=off CGO_ENABLED=0 "$GO" build -trimpath -ldflags="-s -w$extra" -o "$out" "$@"
	) >&2 &
	child=$!
	wait "$child"
	child=""
}

# install NAME moves a freshly built binary into place atomically.
install_bin() {
	chmod 0755 "$tmp/$1"
	mv -f "$tmp/$1" "$dir/$1"
}

todo=$(missing)
start=$(date +%s)

pkgs=""
names=""
for b in $k8s_bins; do
	case " $(echo $todo) " in
	*" $b "*)
		pkgs="$pkgs k8s.io/kubernetes/cmd/$b"
		names="$names $b"
		;;
	esac
done
if [ -n "$pkgs" ]; then
	log "building$names from k8s.io/kubernetes $k8s_version (~10 minutes on 2 cores with a cold Go build cache)"
	t=$(date +%s)
	# shellcheck disable=SC2086 # word splitting of the package list is intended
	gobuild "$here" "$k8s_ldflags" "$tmp/" $pkgs
	for b in $names; do
		install_bin "$b"
	done
	log "built$names in $(($(date +%s) - t))s"
fi

case " $(echo $todo) " in
*" etcd "*)
	log "building etcd from go.etcd.io/etcd/server/v3 $etcd_version"
	t=$(date +%s)
	gobuild "$etcd_mod" "" "$tmp/etcd" go.etcd.io/etcd/server/v3
	install_bin etcd
	log "built etcd in $(($(date +%s) - t))s"
	;;
esac

left=$(missing)
if [ -n "$left" ]; then
	log "still missing after build:" $left
	exit 1
fi
log "done in $(($(date +%s) - start))s: $dir"
printf '%s\n' "$dir"
