#!/usr/bin/env bash
# Builds a minimal image of the demo app (examples/kube-free-demo) without any network: a root
# filesystem with the `kube-free-demo` binary, exactly the shared libraries `ldd` lists for it and
# the dynamic loader, tarred and imported with `docker import`.
#
#   build-image.sh TAG [ENTRYPOINT-ARG...]
#
# The image's ENTRYPOINT is ["/kube-free-demo", ENTRYPOINT-ARG...]; what is given after the image
# at `docker run` (the container's command) are the demo app's own flags:
#
#   build-image.sh kf-demo:1
#   docker run -d -p 127.0.0.1:18080:18080 kf-demo:1 --listen 0.0.0.0:18080 --version 1
#   curl http://127.0.0.1:18080/      # prints 1
#
# Environment:
#   DEMO_BIN     the demo binary (default target/release/examples/kube-free-demo, relative to the
#                repository's top; build it with `cargo build --release --example kube-free-demo`)
#   DOCKER_HOST  the engine to import into (the default engine when unset), as for `docker`
#   BROKEN       unset or empty: a working image. `nobinary`: an image with no binary at all (its
#                root filesystem holds only /etc/kube-free-broken); every `docker run` of it fails
#                at once (the engine cannot exec /kube-free-demo: exit 127, the container stays in
#                state "created").
#   IMAGE_TAR    also keep the root filesystem tarball that was imported at this path (to import
#                the very same tarball into other engines with `docker import --change ...`).
#
# Images that crash, for crash tests, are working images with ENTRYPOINT arguments that make the
# demo exit (the container's own flags come after them; clap takes both):
#
#   build-image.sh kf-demo:crash --exit-after 0s            # exits with status 1 at once
#   build-image.sh kf-demo:crash-later --exit-after 2s      # serves for 2 s, then exits 1
#   build-image.sh kf-demo:dies-on-traffic --exit-after-traffic 0s   # dies at its first request
#   build-image.sh kf-demo:never-ready --never-ready        # serves, /readyz is always 503
#
# Idempotent: every image carries the label kube-free.image-input (a digest of the tarball, the
# ENTRYPOINT and the mode); when TAG already names an image with the same digest in the engine,
# nothing is imported again ("up to date"). Exit 0 and the image's id on stdout on success; exit 2
# on bad usage, 1 on any other failure, with a message on stderr.
set -euo pipefail

me=build-image.sh
die() {
    echo "$me: $*" >&2
    exit 1
}
if [ $# -lt 1 ] || [ -z "$1" ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $me TAG [ENTRYPOINT-ARG...]   (see the header of $0)" >&2
    exit 2
fi
tag=$1
shift

top=$(cd "$(dirname "$0")/../.." && pwd)
bin=${DEMO_BIN:-target/release/examples/kube-free-demo}
case $bin in
/*) ;;
*) bin=$top/$bin ;;
esac
broken=${BROKEN:-}
case $broken in
"" | nobinary) ;;
*) echo "$me: BROKEN=$broken is not known (empty or nobinary)" >&2; exit 2 ;;
esac

for tool in docker tar sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found on PATH"
done
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "no Docker engine answers at ${DOCKER_HOST:-the default socket}: $(docker version 2>&1 | tail -n 1)"

work=$(mktemp -d "${TMPDIR:-/tmp}/kf-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/tmp" "$root/etc"
chmod 1777 "$root/tmp"

if [ "$broken" = nobinary ]; then
    echo "This image has no binary on purpose (build-image.sh BROKEN=nobinary)." >"$root/etc/kube-free-broken"
else
    command -v ldd >/dev/null || die "ldd not found on PATH"
    [ -f "$bin" ] || die "demo binary $bin not found (set DEMO_BIN, or run: cargo build --release --example kube-free-demo)"
    [ -x "$bin" ] || die "demo binary $bin is not executable"
    cp "$bin" "$root/kube-free-demo"
    # ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", the loader as
    # "/lib64/ld-linux-x86-64.so.2 (0x...)", the vDSO as "linux-vdso.so.1 (0x...)" (not a file).
    if ! libs=$(ldd "$bin" 2>&1); then
        case $libs in
        *"not a dynamic executable"* | *"statically linked"*) libs= ;;
        *) die "ldd $bin failed: $libs" ;;
        esac
    fi
    if grep -q "not found" <<<"$libs"; then
        die "ldd $bin: a library is missing: $(grep "not found" <<<"$libs" | tr -s ' \t' ' ')"
    fi
    while read -r first arrow path _; do
        if [ "$arrow" = "=>" ]; then
            lib=$path
        else
            lib=$first
        fi
        case $lib in
        /*) ;;
        *) continue ;; # linux-vdso.so.1, "statically linked"
        esac
        [ -e "$lib" ] || die "ldd $bin lists $lib, which does not exist"
        mkdir -p "$root$(dirname "$lib")"
        # -L: the file itself where the path is a symlink (e.g. /lib64/ld-linux-x86-64.so.2).
        cp -L "$lib" "$root$lib"
    done <<<"$libs"
fi

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/rootfs.tar" .
entrypoint='["/kube-free-demo"'
for arg in "$@"; do
    # JSON string: escape backslashes and double quotes (the demo's flags need nothing more).
    esc=${arg//\\/\\\\}
    esc=${esc//\"/\\\"}
    entrypoint+=", \"$esc\""
done
entrypoint+=']'
input=$( (sha256sum <"$work/rootfs.tar" && echo "$entrypoint" && echo "broken=$broken") | sha256sum | cut -c1-64)

have=$(docker image inspect --format '{{index .Config.Labels "kube-free.image-input"}}' "$tag" 2>/dev/null || true)
if [ "$have" = "$input" ]; then
    echo "$me: $tag is up to date" >&2
else
    out=$(docker import \
        --change "ENTRYPOINT $entrypoint" \
        --change "LABEL kube-free.image-input=$input" \
        --change "LABEL kube-free.demo-broken=${broken:-no}" \
        --message "kube-free-demo, built by examples/quickstart-docker/build-image.sh" \
        "$work/rootfs.tar" "$tag" 2>&1) || die "docker import $tag failed: $out"
    echo "$me: imported $tag ($(du -h "$work/rootfs.tar" | cut -f1) root filesystem, ENTRYPOINT $entrypoint)" >&2
fi
if [ -n "${IMAGE_TAR:-}" ]; then
    cp "$work/rootfs.tar" "$IMAGE_TAR"
fi
docker image inspect --format '{{.Id}}' "$tag"
