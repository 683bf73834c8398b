#!/usr/bin/env bash
# kube-free quickstart with containers: a real blue-green deploy of Docker containers on this machine.
#
# Builds the demo app's image locally (build-image.sh: no registry needed) as kf-demo:1.0.0 and
# kf-demo:2.0.0, starts HAProxy, deploys 1.0.0 from this directory's kube-free.yaml committed to a
# temporary Git repository, commits 2.0.0 and reconciles while wrk sends keep-alive requests through
# HAProxy. Prints what was served by which version and how many requests failed; exits 1 if any did.
#
# Needs: docker (a running engine), haproxy, wrk, git, curl; the kube-free binary and the demo app,
# built with
#   cargo build --release --bin kube-free --example kube-free-demo
# Settings (environment): KUBE_FREE (binary), DEMO_DIR (directory of kube-free-demo),
# LOAD_SECONDS (default 15), KEEP=1 to leave HAProxy and the containers running afterwards.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
KUBE_FREE=${KUBE_FREE:-$top/target/release/kube-free}
DEMO_DIR=${DEMO_DIR:-$top/target/release/examples}
LOAD_SECONDS=${LOAD_SECONDS:-15}
work=/tmp/kube-free-quickstart-docker  # the paths kube-free.yaml names
hx=$work/haproxy
frontend=http://127.0.0.1:18200

for tool in docker haproxy wrk git curl sed; do
  command -v "$tool" >/dev/null || { echo "quickstart-docker: $tool is missing (apt-get install -y docker.io haproxy wrk git curl)" >&2; exit 2; }
done
[ -x "$KUBE_FREE" ] || { echo "quickstart-docker: no kube-free binary at $KUBE_FREE (cargo build --release --bin kube-free)" >&2; exit 2; }
[ -x "$DEMO_DIR/kube-free-demo" ] || { echo "quickstart-docker: no demo app in $DEMO_DIR (cargo build --release --example kube-free-demo)" >&2; exit 2; }
docker info >/dev/null 2>&1 || { echo "quickstart-docker: no Docker engine answers (systemctl start docker)" >&2; exit 2; }

kf() { "$KUBE_FREE" "$@" --repo "$work/repo"; }

remove_containers() {
  ids=$(docker ps -aq --filter label=kube-free.env=local --filter label=kube-free.app=demo)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
}
stop_all() {
  [ "${KEEP:-0}" = 1 ] && return
  remove_containers
  [ -f "$hx/haproxy.pid" ] && kill "$(cat "$hx/haproxy.pid")" 2>/dev/null || true
}
trap stop_all EXIT

step() { printf '\n== %s\n' "$*"; }

step "building the demo image kf-demo:1.0.0 (and tagging it 2.0.0) with build-image.sh"
DEMO_BIN=$DEMO_DIR/kube-free-demo bash "$here/build-image.sh" kf-demo:1.0.0 >/dev/null
docker tag kf-demo:1.0.0 kf-demo:2.0.0

step "starting HAProxy (master-worker, admin socket $hx/admin.sock)"
stop_all
rm -rf "$work"
mkdir -p "$hx"
cat >"$hx/base.cfg" <<CFG
global
    master-worker
    pidfile $hx/haproxy.pid
    stats socket $hx/admin.sock mode 600 level admin expose-fd listeners
defaults
    timeout connect 2s
    timeout client 30s
    timeout server 30s
CFG
: >"$hx/kube-free.cfg"              # kube-free writes this file
haproxy -W -D -f "$hx/base.cfg" -f "$hx/kube-free.cfg"
for _ in $(seq 50); do [ -S "$hx/admin.sock" ] && break; sleep 0.1; done

step "desired state: a temporary Git repository with examples/quickstart-docker/kube-free.yaml, version 1.0.0"
mkdir -p "$work/repo"
cp "$here/kube-free.yaml" "$work/repo/"
git -C "$work/repo" init -q -b main
git -C "$work/repo" add -A
git -C "$work/repo" -c user.name=quickstart -c user.email=quickstart@localhost commit -q -m "demo 1.0.0"
kf validate

step "kube-free reconcile --once: deploy 1.0.0"
kf reconcile --once
echo "served now: $(curl -fsS "$frontend/version")"
docker ps --filter label=kube-free.env=local --format 'container {{.Names}}: {{.Image}}, {{.Status}}, {{.Ports}}'

step "commit version 2.0.0"
sed -i 's/version: "1.0.0"/version: "2.0.0"/' "$work/repo/kube-free.yaml"
git -C "$work/repo" -c user.name=quickstart -c user.email=quickstart@localhost commit -q -am "demo 2.0.0"
kf plan || [ $? = 10 ]

step "kube-free reconcile --once under load: wrk, 2 threads, 20 keep-alive connections, ${LOAD_SECONDS}s"
wrk -t2 -c20 -d"${LOAD_SECONDS}s" -s "$here/../quickstart/wrk-count.lua" "$frontend/" >"$work/wrk.txt" 2>&1 &
wrk_pid=$!
sleep 2
kf reconcile --once
wait "$wrk_pid"

step "result"
kf status
docker ps -a --filter label=kube-free.env=local --format 'container {{.Names}}: {{.Image}}, {{.Status}}'
grep -E '^(requests|served by version [^:]*|non-2xx|socket errors|failed):' "$work/wrk.txt"
echo "served now: $(curl -fsS "$frontend/version")"
failed=$(sed -n 's/^failed: //p' "$work/wrk.txt")
if [ "$failed" = 0 ]; then
  echo "quickstart-docker: switched 1.0.0 -> 2.0.0 under load with 0 failed requests"
else
  echo "quickstart-docker: $failed requests failed" >&2
  exit 1
fi
