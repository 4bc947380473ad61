#!/usr/bin/env bash
# Benchmarks memfis against bindfs-over-tmpfs (a plain FUSE passthrough) and tmpfs, all in one run,
# and prints ratios (the machines are shared and noisy: compare within a run, not across runs).
# Usage: sudo ./scripts/bench.sh            (root: mounts tmpfs and FUSE filesystems)
#        MEMFIS_BIN=/path/to/memfis ./scripts/bench.sh   runs another build (e.g. an older
#        commit's, for a before/after in one sitting) instead of this tree's release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/install-deps.sh
if [ -z "${MEMFIS_BIN:-}" ]; then cargo build --release --locked -q; fi
BIN=${MEMFIS_BIN:-$PWD/target/release/memfis}
export MEMFIS_BIN=$BIN

work=$(mktemp -d /tmp/memfis-bench.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
cleanup() {
  set +e
  for m in "$work/memfis" "$work/memfis-sock" "$work/bindfs" "$work/bindfs-backing" "$work/tmpfs" "$work/src"; do
    mountpoint -q "$m" && { fusermount3 -u "$m" 2>/dev/null || umount "$m"; }
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
mkdir -p "$work"/{src,tmpfs,bindfs-backing,bindfs,memfis,memfis-sock}
mount -t tmpfs -o size=2g tmpfs "$work/src"
mount -t tmpfs -o size=2g tmpfs "$work/tmpfs"

memcached -U 0 -l 127.0.0.1 -p "$port" -u root -m 2048 -M -I 8m -t 1 &
pids+=($!)
sleep 0.5
stat_total() { # memcached commands so far
  python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.sendall(b"stats\r\n")
buf = b""
while not buf.endswith(b"END\r\n"): buf += s.recv(65536)
st = dict(l.split(" ")[1:3] for l in buf.decode().splitlines() if l.startswith("STAT "))
keys = ["cmd_get", "cmd_set", "cmd_touch", "incr_hits", "incr_misses", "decr_hits", "decr_misses",
        "delete_hits", "delete_misses"]
print(sum(int(st.get(k, 0)) for k in keys))
PY
}

mount_memfis() {
  # shellcheck disable=SC2086 # MEMFIS_BENCH_ARGS: extra mount options to compare (word-split on purpose)
  "$BIN" mount "$work/memfis" --create --server "127.0.0.1:$port" --prefix memfis://bench --log-file "$work/memfis.log" ${MEMFIS_BENCH_ARGS:-}
  mpid=$(pgrep -n -f "memfis mount $work/memfis ")
}
mount -t tmpfs -o size=2g tmpfs "$work/bindfs-backing"
bindfs "$work/bindfs-backing" "$work/bindfs"
# A second mount through a memcached on a unix socket, as `memfis up` runs one machine.
memcached -s "$work/mount.sock" -a 0666 -u root -m 2048 -M -I 8m -t 1 &
pids+=($!)
sleep 0.5
"$BIN" mount "$work/memfis-sock" --create --server "unix:$work/mount.sock" --prefix memfis://bench \
  --log-file "$work/memfis-sock.log"

make_small_set "$work/src"
python3 - "$work/src" <<'PY'
import os, random, sys
root = sys.argv[1]; rnd = random.Random(43)
os.makedirs(f"{root}/large")
for i in range(40):
    with open(f"{root}/large/f{i:02}.bin", "wb") as f:
        f.write(rnd.randbytes(4 << 20))
PY
small_mb=$(du -sm --apparent-size "$work/src/small" | cut -f1)
mount_memfis

secs() { echo "$EPOCHREALTIME"; } # no process start inside the timed span
run_cp() { # run_cp SET TARGET -> seconds
  local t0 t1; t0=$(secs); cp -a "$work/src/$1" "$2/"; t1=$(secs)
  python3 -c "print(f'{$t1-$t0:.3f}')"
}

last_trips() { sleep 1; grep -o 'after [0-9]* store round trips' "$work/memfis.log" | grep -o '[0-9]*' | tail -1; }

min() { python3 -c "import sys; print(min(float(x) for x in sys.argv[1:]))" "$@"; }
declare -A T
# memfis first: the small set on a fresh mount, so its round-trip counter covers that copy alone.
before=$(stat_total)
memfis_small=($(run_cp small "$work/memfis"))
commands_small=$(( $(stat_total) - before ))
fusermount3 -u "$work/memfis"
trips_small=$(last_trips)
mount_memfis
diff -r "$work/src/small" "$work/memfis/small" >/dev/null && echo "small set verified: diff -r clean"
# Then ROUNDS interleaved rounds of every target; each figure is the best of its rounds, which
# filters out the noise of a shared machine better than a mean.
ROUNDS=${ROUNDS:-3}
tmpfs_small=(); bindfs_small=(); tmpfs_large=(); bindfs_large=(); memfis_large=(); bindfs_rm=(); memfis_rm=()
sock_small=(); sock_rm=()
run_rm() { # run_rm DIR -> seconds
  local t0 t1; t0=$(secs); rm -rf "$1"; t1=$(secs)
  python3 -c "print(f'{$t1-$t0:.3f}')"
}
for round in $(seq "$ROUNDS"); do
  rm -rf "$work/tmpfs/small" "$work/bindfs/small" "$work/tmpfs/large" "$work/bindfs/large"
  [ "$round" = 1 ] || rm -rf "$work/memfis/small" "$work/memfis/large"
  tmpfs_small+=($(run_cp small "$work/tmpfs"))
  bindfs_small+=($(run_cp small "$work/bindfs"))
  [ "$round" = 1 ] || memfis_small+=($(run_cp small "$work/memfis"))
  sock_small+=($(run_cp small "$work/memfis-sock"))
  tmpfs_large+=($(run_cp large "$work/tmpfs"))
  bindfs_large+=($(run_cp large "$work/bindfs"))
  memfis_large+=($(run_cp large "$work/memfis"))
  # Removal of the small tree (2,000 files, 20 directories), the same on both.
  bindfs_rm+=($(run_rm "$work/bindfs/small"))
  rm_before=$(stat_total)
  memfis_rm+=($(run_rm "$work/memfis/small"))
  commands_rm=$(( $(stat_total) - rm_before )) # (the last round's)
  sock_rm+=($(run_rm "$work/memfis-sock/small"))
done
sock_small_s=$(min "${sock_small[@]}"); sock_rm_s=$(min "${sock_rm[@]}")
rm_bindfs=$(min "${bindfs_rm[@]}"); rm_memfis=$(min "${memfis_rm[@]}")
cp -a "$work/src/small" "$work/memfis/" # served below
for set in small large; do
  for target in tmpfs bindfs memfis; do
    var="${target}_${set}[@]"
    T[$set,$target]=$(min "${!var}")
  done
done
cmp -s "$work/src/large/f07.bin" "$work/memfis/large/f07.bin" && echo "large set verified: cmp clean"
rss_kb=$(awk '/VmHWM/{print $2}' "/proc/$mpid/status")

# Creating files in one big directory: the last 1,000 of 20,000 vs the first 1,000.
big=$(python3 - "$work/memfis/big" <<'PY'
import os, sys, time
d = sys.argv[1]; os.mkdir(d); times = []
for block in range(20):
    t0 = time.monotonic()
    for i in range(block * 1000, block * 1000 + 1000):
        open(f"{d}/f{i:05}", "wb").close()
    times.append(time.monotonic() - t0)
print(f"{times[0]:.3f} {times[-1]:.3f} {times[-1] / times[0]:.2f}")
PY
)
ls "$work/memfis/big" | wc -l | grep -qx 20000 && echo "big directory verified: 20000 entries listed"

# memfis load (no FUSE) of the same small set, each round into a fresh prefix, against a raw
# pipelined `set` of the same bytes by a minimal client; then a re-load with nothing to do.
raw_set() { # raw_set KEYPREFIX -> seconds to set every small file, 100 pipelined at a time
  python3 - "$port" "$work/src/small" "$1" <<'PY'
import os, socket, sys, time
port, root, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
files = []
for d, _, names in os.walk(root):
    for n in names:
        p = os.path.join(d, n)
        files.append((prefix + p[len(root):], open(p, "rb").read()))
s = socket.create_connection(("127.0.0.1", port))
t0 = time.monotonic()
for i in range(0, len(files), 100):
    chunk = files[i:i + 100]
    s.sendall(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(v), v) for k, v in chunk))
    buf = b""
    while buf.count(b"\r\n") < len(chunk):
        buf += s.recv(65536)
print(f"{time.monotonic() - t0:.3f}")
PY
}
run_load() { # run_load PREFIX -> seconds
  local t0 t1; t0=$(secs); "$BIN" load "$work/src/small" --server "127.0.0.1:$port" --prefix "$1" >/dev/null; t1=$(secs)
  python3 -c "print(f'{$t1-$t0:.3f}')"
}
load_runs=(); reload_runs=(); raw_runs=()
for round in $(seq "$ROUNDS"); do
  load_runs+=($(run_load "memfis://bench-load$round"))
  reload_runs+=($(run_load "memfis://bench-load$round"))
  raw_runs+=($(raw_set "rawbench$round"))
done
load_s=$(min "${load_runs[@]}"); reload_s=$(min "${reload_runs[@]}"); raw_s=$(min "${raw_runs[@]}")
"$BIN" check --server "127.0.0.1:$port" --prefix memfis://bench-load1 >/dev/null && echo "loaded set verified: memfis check clean"

# The Rust docs shipped with the toolchain (~52k files): load, check, export, load --delete of
# an emptied source. BENCH_DOCS=0 skips it.
docs=$(rustc --print sysroot 2>/dev/null)/share/doc/rust/html
docs_line=""
if [ "${BENCH_DOCS:-1}" = 1 ] && [ -d "$docs" ]; then
  docs_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  memcached -U 0 -l 127.0.0.1 -p "$docs_port" -u root -m 3072 -M -I 16m -t 1 &
  docs_pid=$!; pids+=($docs_pid)
  sleep 0.5
  docs_store=(--server "127.0.0.1:$docs_port" --prefix memfis://docs)
  docs_files=$(find "$docs" -type f | wc -l)
  timed() { /usr/bin/time -f "%e %M" "$@" 2>&1 >/dev/null | tail -1; }
  read -r docs_load_s docs_load_kb < <(timed "$BIN" load "$docs" "${docs_store[@]}")
  read -r docs_check_s _ < <(timed "$BIN" check "${docs_store[@]}")
  read -r docs_export_s docs_export_kb < <(timed "$BIN" export "$work/docs-export" "${docs_store[@]}")
  diff -r "$docs" "$work/docs-export" >/dev/null && echo "docs export verified: diff -r clean"
  rm -rf "$work/docs-export"; mkdir -p "$work/empty"
  read -r docs_delete_s _ < <(timed "$BIN" load "$work/empty" --delete "${docs_store[@]}")
  kill "$docs_pid"; wait "$docs_pid" 2>/dev/null || true
  largest=$(find "$docs" -type f -printf '%s\n' | sort -n | tail -1)
  docs_line="$docs_files $docs_load_s $docs_load_kb $docs_check_s $docs_export_s $docs_export_kb $docs_delete_s $largest"
fi

# Serving: wrk against the generated config (files from the store) and against nginx serving the
# same files from tmpfs, in the same run. 200 of the small files, requested round robin.
python3 - "$work/urls.lua" <<'PY'
import sys
paths = [f"/small/d{i % 20:02}/f{i:04}.html" for i in range(0, 2000, 10)]
with open(sys.argv[1], "w") as f:
    f.write("local paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n")
    f.write("local i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(nil, paths[i])\nend\n")
PY
store_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
static_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx"
"$BIN" nginx-config --server "127.0.0.1:$port" --prefix memfis://bench --listen "127.0.0.1:$store_port" > "$work/nginx/store.conf"
# The same files in a second memcached reached over a unix socket (loaded with memfis load).
sock_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
memcached -U 0 -s "$work/mc.sock" -a 0666 -u root -m 512 -M -I 8m -t 1 &
pids+=($!)
sleep 0.5
"$BIN" load "$work/src/small" --to /small --server "unix:$work/mc.sock" --prefix memfis://bench >/dev/null
"$BIN" nginx-config --server "unix:$work/mc.sock" --prefix memfis://bench --name bench_sock \
  --listen "127.0.0.1:$sock_port" > "$work/nginx/sock.conf"
write_nginx_conf 2 "\
    include $work/nginx/store.conf;
    include $work/nginx/sock.conf;
    server { listen 127.0.0.1:$static_port; root $work/src; }"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)
sleep 1
wrk_run() { # wrk_run PORT -> "requests/s p99_ms"
  wrk -t1 -c32 -d8s --latency -s "$work/urls.lua" "http://127.0.0.1:$1" | python3 -c '
import re, sys
out = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
print(f"{rps:.0f} {p99:.2f}")'
}
curl -sf -o /dev/null "http://127.0.0.1:$store_port/small/d00/f0000.html" && echo "nginx serves from the store"
# Interleaved rounds again; the best requests/s of each, with the p99 of that round.
best() { sort -k1,1nr | sed -n 1p; }
curl -sf -o /dev/null "http://127.0.0.1:$sock_port/small/d00/f0000.html" && echo "nginx serves from the store over a unix socket"
store_runs=""; static_runs=""; sock_runs=""
for round in $(seq "$ROUNDS"); do
  store_runs+="$(wrk_run "$store_port")"$'\n'
  sock_runs+="$(wrk_run "$sock_port")"$'\n'
  static_runs+="$(wrk_run "$static_port")"$'\n'
done
read -r store_rps store_p99 < <(printf '%s' "$store_runs" | best)
read -r sock_rps sock_p99 < <(printf '%s' "$sock_runs" | best)
read -r static_rps static_p99 < <(printf '%s' "$static_runs" | best)
fusermount3 -u "$work/memfis"; fusermount3 -u "$work/memfis-sock"

python3 - <<PY
t = {"small": {"tmpfs": ${T[small,tmpfs]}, "bindfs": ${T[small,bindfs]}, "memfis": ${T[small,memfis]}},
     "large": {"tmpfs": ${T[large,tmpfs]}, "bindfs": ${T[large,bindfs]}, "memfis": ${T[large,memfis]}}}
small_mb, large_mb = $small_mb, 160
print(f"Best of $ROUNDS interleaved rounds per figure.")
print()
print("| cp -a of | tmpfs | bindfs | memfis | memfis / bindfs |")
print("| --- | --- | --- | --- | --- |")
fs = {k: 2000 / v for k, v in t["small"].items()}
print(f"| (a) 2,000 files, 1-16 KB, 20 dirs ({small_mb} MB) | {fs['tmpfs']:.0f} files/s | {fs['bindfs']:.0f} files/s | {fs['memfis']:.0f} files/s | {fs['memfis'] / fs['bindfs']:.2f}x |")
ms = {k: large_mb / v for k, v in t["large"].items()}
print(f"| (b) 40 files of 4 MB | {ms['tmpfs']:.0f} MB/s | {ms['bindfs']:.0f} MB/s | {ms['memfis']:.0f} MB/s | {ms['memfis'] / ms['bindfs']:.2f}x |")
rb, rm = $rm_bindfs, $rm_memfis
print(f"| (c) rm -rf of (a) | - | {2000 / rb:.0f} files/s | {2000 / rm:.0f} files/s | {rb / rm:.2f}x |")
sc, sr = $sock_small_s, $sock_rm_s
print(f"| (a) through a memcached on a unix socket (as memfis up) | - | - | {2000 / sc:.0f} files/s | {(2000 / sc) / fs['bindfs']:.2f}x |")
print(f"| (c) rm -rf of it | - | - | {2000 / sr:.0f} files/s | {rb / sr:.2f}x |")
print()
print(f"- memcached commands per small file created by cp -a (server stats): {$commands_small / 2000:.2f}")
print(f"- memcached commands per file removed by rm -rf (server stats, the 20 rmdirs included): {$commands_rm / 2000:.2f}")
print(f"- store round trips per small file created by cp -a (client counter, the 20 mkdirs included): {${trips_small:-0} / 2000:.2f}")
print(f"- memfis daemon peak RSS (VmHWM): {$rss_kb / 1024:.0f} MB")
first, last, ratio = "$big".split()
print(f"- 20,000 empty files in one directory: first 1,000 {first} s, last 1,000 {last} s, ratio {ratio}")
print()
print("| wrk, 200 small files round robin, 32 connections, 8 s | requests/s | p99 latency |")
print("| --- | --- | --- |")
print(f"| nginx static from tmpfs | $static_rps | $static_p99 ms |")
print(f"| nginx memcached_pass (memfis store, generated config) | $store_rps | $store_p99 ms |")
print(f"| nginx memcached_pass over a unix socket (same files, memfis load) | $sock_rps | $sock_p99 ms |")
print(f"| store / static | {$store_rps / $static_rps:.2f}x | |")
print(f"| unix socket / TCP | {$sock_rps / $store_rps:.2f}x | |")
print()
load_s, reload_s, raw_s, cp_s = $load_s, $reload_s, $raw_s, t["small"]["memfis"]
print("| memfis load of (a) | seconds | files/s | ratio |")
print("| --- | --- | --- | --- |")
print(f"| cp -a through the mount | {cp_s:.3f} | {2000 / cp_s:.0f} | 1x |")
print(f"| memfis load | {load_s:.3f} | {2000 / load_s:.0f} | {cp_s / load_s:.1f}x cp -a |")
print(f"| raw pipelined set of the same bytes (one key a file, no metadata) | {raw_s:.3f} | {2000 / raw_s:.0f} | load is {raw_s / load_s:.0%} of it |")
print(f"| re-load, nothing to do | {reload_s:.3f} | {2000 / reload_s:.0f} | |")
docs = "$docs_line".split()
if docs:
    n, ls, lkb, cs, es, ekb, ds, big = docs
    n = int(n)
    print()
    print(f"Rust docs ({n} files): load {float(ls):.1f} s ({n / float(ls):.0f} files/s, peak RSS {int(lkb) / 1024:.0f} MB, largest file {int(big) / 2**20:.1f} MB); "
          f"check {float(cs):.1f} s; export {n / float(es):.0f} files/s (peak RSS {int(ekb) / 1024:.0f} MB); "
          f"load --delete of an emptied source {n / float(ds):.0f} files/s")
PY

# Serving with --gzip against nginx's own gzip, in a run of its own.
./scripts/bench-gzip.sh
