#!/usr/bin/env bash
# What --replicas 2 costs against one copy, on the same pool of three memcached servers in one
# run: cp -a and rm -rf of 2,000 small files through a mount, memfis load of them, and nginx
# serving 200 of them (wrk). Prints times and ratios (replicas 2 / replicas 1); each figure is
# the best of ROUNDS interleaved rounds (default 3), since these machines are shared and noisy.
# Usage: sudo ./scripts/bench-replicas.sh   (root: mounts FUSE filesystems)
#        MEMFIS_BIN=/path/to/memfis ./scripts/bench-replicas.sh   runs another build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/install-deps.sh
if [ -z "${MEMFIS_BIN:-}" ]; then cargo build --release --locked -q; fi
BIN=${MEMFIS_BIN:-$PWD/target/release/memfis}

work=$(mktemp -d /tmp/memfis-bench-replicas.XXXXXX)
pids=()
cleanup() {
  set +e
  for m in "$work"/mnt*; do mountpoint -q "$m" && fusermount3 -u "$m"; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
servers=()
for _ in 1 2 3; do
  p=$(free_port)
  memcached -U 0 -l 127.0.0.1 -p "$p" -u root -m 1024 -M -I 8m -t 1 &
  pids+=($!)
  servers+=("127.0.0.1:$p")
done
pool=$(IFS=,; echo "${servers[*]}")
sleep 0.5

make_small_set "$work/src"

secs() { echo "$EPOCHREALTIME"; }
span() { python3 -c "print(f'{$2-$1:.3f}')"; }
min() { python3 -c "import sys; print(min(float(x) for x in sys.argv[1:]))" "$@"; }
declare -A runs
ROUNDS=${ROUNDS:-3}
for round in $(seq "$ROUNDS"); do
  for n in 1 2; do
    prefix="memfis://bench-r$n-$round"
    mnt="$work/mnt$n"; mkdir -p "$mnt"
    "$BIN" mount "$mnt" --create --server "$pool" --prefix "$prefix" --replicas "$n" \
      --log-file "$work/mount$n.log"
    t0=$(secs); cp -a "$work/src/small" "$mnt/"; t1=$(secs)
    runs[cp,$n]+="$(span "$t0" "$t1") "
    [ "$round" = 1 ] && diff -r "$work/src/small" "$mnt/small" >/dev/null && echo "replicas $n: cp -a verified (diff -r)"
    t0=$(secs); rm -rf "$mnt/small"; t1=$(secs)
    runs[rm,$n]+="$(span "$t0" "$t1") "
    fusermount3 -u "$mnt"
    t0=$(secs); "$BIN" load "$work/src/small" --server "$pool" --prefix "$prefix-load" --replicas "$n" >/dev/null 2>&1; t1=$(secs)
    runs[load,$n]+="$(span "$t0" "$t1") "
  done
done
[ "$("$BIN" check --server "$pool" --prefix memfis://bench-r2-1-load >/dev/null; echo $?)" = 0 ] && echo "replicas 2: loaded tree checked clean, every copy present"

# Serving: the loaded trees of round 1 through their generated configs, in one nginx.
cat > "$work/urls.lua" <<'LUA'
local paths = {}
for i = 0, 1999, 10 do paths[#paths + 1] = string.format("/d%02d/f%04d.html", i % 20, i) end
local i = 0
request = function() i = i % #paths + 1; return wrk.format(nil, paths[i]) end
LUA
mkdir -p "$work/nginx"
declare -A port
for n in 1 2; do
  port[$n]=$(free_port)
  "$BIN" nginx-config --server "$pool" --prefix "memfis://bench-r$n-1-load" --replicas "$n" \
    --name "r$n" --listen "127.0.0.1:${port[$n]}" > "$work/nginx/r$n.conf"
done
write_nginx_conf 2 "\
    include $work/nginx/r1.conf;
    include $work/nginx/r2.conf;"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)
sleep 1
wrk_rps() {
  wrk -t1 -c32 -d8s -s "$work/urls.lua" "http://127.0.0.1:$1" | awk '/Requests\/sec/{print $2}'
}
for _ in $(seq "$ROUNDS"); do
  for n in 1 2; do runs[serve,$n]+="$(wrk_rps "${port[$n]}") "; done
done

python3 - <<PY
def best(text, high=False):
    v = [float(x) for x in text.split()]
    return max(v) if high else min(v)
r = {k: best(v) for k, v in {
    "cp1": "${runs[cp,1]}", "cp2": "${runs[cp,2]}", "rm1": "${runs[rm,1]}", "rm2": "${runs[rm,2]}",
    "load1": "${runs[load,1]}", "load2": "${runs[load,2]}"}.items()}
s1, s2 = best("${runs[serve,1]}", True), best("${runs[serve,2]}", True)
print()
print("| 2,000 files of 1-16 KB, pool of 3 | replicas 1 | replicas 2 | 2 / 1 (time) |")
print("| --- | --- | --- | --- |")
for name, key in [("cp -a through a mount", "cp"), ("rm -rf through a mount", "rm"), ("memfis load", "load")]:
    a, b = r[key + "1"], r[key + "2"]
    print(f"| {name} | {a:.2f} s | {b:.2f} s | {b / a:.2f}x |")
print(f"| nginx serving 200 of them (wrk, 32 connections) | {s1:.0f} req/s | {s2:.0f} req/s | {s1 / s2:.2f}x |")
PY
