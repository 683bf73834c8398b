#!/usr/bin/env bash
# kube-free with nginx: a real blue-green deploy on this machine, nginx as the traffic layer.
#
# Starts nginx with its own prefix in /tmp/kube-free-nginx (its nginx.conf loads the Lua module in
# MODE=dynamic, the default, and not in MODE=reload), deploys the demo app 1.0.0 from this
# directory's kube-free.yaml committed to a temporary Git repository, commits 2.0.0 and reconciles
# while wrk sends keep-alive requests through nginx. Prints what each version served and how many
# requests failed. In dynamic mode any failed request is an error (exit 1); in reload mode the loss
# of the reloads is printed, not hidden.
#
# Needs: nginx (and libnginx-mod-http-lua for dynamic), wrk, git, curl; the kube-free binary and
# the demo app, built with `cargo build --release --bin kube-free --example kube-free-demo`.
# Settings (environment): MODE (dynamic|reload), KUBE_FREE, DEMO_DIR, LOAD_SECONDS (default 15),
# KEEP=1 to leave nginx and the app running afterwards.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
KUBE_FREE=${KUBE_FREE:-$top/target/release/kube-free}
DEMO_DIR=${DEMO_DIR:-$top/target/release/examples}
LOAD_SECONDS=${LOAD_SECONDS:-15}
MODE=${MODE:-dynamic}
work=/tmp/kube-free-nginx               # the paths kube-free.yaml names
nx=$work/nginx
frontend=http://127.0.0.1:18100
modules=/usr/share/nginx/modules

for tool in nginx wrk git curl sed; do
  command -v "$tool" >/dev/null || { echo "nginx example: $tool is missing (apt-get install -y nginx libnginx-mod-http-lua wrk git curl)" >&2; exit 2; }
done
case $MODE in dynamic|reload) ;; *) echo "nginx example: MODE is dynamic or reload, not $MODE" >&2; exit 2 ;; esac
[ -x "$KUBE_FREE" ] || { echo "nginx example: no kube-free binary at $KUBE_FREE (cargo build --release --bin kube-free)" >&2; exit 2; }
[ -x "$DEMO_DIR/kube-free-demo" ] || { echo "nginx example: no demo app in $DEMO_DIR (cargo build --release --example kube-free-demo)" >&2; exit 2; }
export PATH="$DEMO_DIR:$PATH"

kf() { "$KUBE_FREE" "$@" --repo "$work/repo"; }

stop_all() {
  [ "${KEEP:-0}" = 1 ] && return
  for f in "$work"/state/*/*/*.json; do
    [ -f "$f" ] && kill "$(sed 's/.*"pid":\([0-9]*\).*/\1/' "$f")" 2>/dev/null || true
  done
  [ -f "$nx/nginx.pid" ] && kill "$(cat "$nx/nginx.pid")" 2>/dev/null || true
}
trap stop_all EXIT

step() { printf '\n== %s\n' "$*"; }

step "starting nginx ($MODE mode) with prefix $nx"
stop_all
rm -rf "$work"
mkdir -p "$nx/logs"
{
  if [ "$MODE" = dynamic ]; then
    echo "load_module $modules/ndk_http_module.so;"
    echo "load_module $modules/ngx_http_lua_module.so;"
  fi
  cat <<CONF
worker_processes 2;
pid $nx/nginx.pid;
error_log $nx/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $nx/body;
    proxy_temp_path $nx/proxy;
    include $nx/kube-free.conf;   # the file kube-free owns
}
CONF
} >"$nx/nginx.conf"
: >"$nx/kube-free.conf"
nginx -p "$nx" -c nginx.conf
for _ in $(seq 50); do [ -s "$nx/nginx.pid" ] && break; sleep 0.1; done

step "desired state: a temporary Git repository with examples/nginx/kube-free.yaml, version 1.0.0"
mkdir -p "$work/repo"
if [ "$MODE" = reload ]; then
  # plain nginx has no runtime endpoint: no admin_socket
  sed -e "s/mode: dynamic /mode: reload /" -e "/admin_socket:/d" "$here/kube-free.yaml" >"$work/repo/kube-free.yaml"
else
  cp "$here/kube-free.yaml" "$work/repo/kube-free.yaml"
fi
git -C "$work/repo" init -q -b main
git -C "$work/repo" add -A
git -C "$work/repo" -c user.name=example -c user.email=example@localhost commit -q -m "demo 1.0.0"
kf validate

step "kube-free reconcile --once: deploy 1.0.0"
kf reconcile --once
echo "served now: $(curl -fsS "$frontend/version")"

step "commit version 2.0.0"
sed -i 's/version: "1.0.0"/version: "2.0.0"/' "$work/repo/kube-free.yaml"
git -C "$work/repo" -c user.name=example -c user.email=example@localhost commit -q -am "demo 2.0.0"
kf plan || [ $? = 10 ]

step "kube-free reconcile --once under load: wrk, 2 threads, 20 keep-alive connections, ${LOAD_SECONDS}s"
wrk -t2 -c20 -d"${LOAD_SECONDS}s" -s "$top/examples/quickstart/wrk-count.lua" "$frontend/" >"$work/wrk.txt" 2>&1 &
wrk_pid=$!
sleep 2
kf reconcile --once
wait "$wrk_pid"

step "result"
kf status
grep -E '^(requests|served by version [^:]*|non-2xx|socket errors|failed):' "$work/wrk.txt"
echo "served now: $(curl -fsS "$frontend/version")"
failed=$(sed -n 's/^failed: //p' "$work/wrk.txt")
if [ "$failed" = 0 ]; then
  echo "nginx example ($MODE): switched 1.0.0 -> 2.0.0 under load with 0 failed requests"
elif [ "$MODE" = reload ]; then
  echo "nginx example (reload): switched 1.0.0 -> 2.0.0 under load; the reloads cost $failed failed requests"
else
  echo "nginx example ($MODE): $failed requests failed" >&2
  exit 1
fi
