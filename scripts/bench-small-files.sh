#!/usr/bin/env bash
# Before/after in one sitting for small files: `cp -a` and `rm -rf` of bench.sh's set (a) (2,000
# files of 1-16 KB in 20 directories) through mounts of each build named, over loopback TCP and over
# a unix socket (as `memfis up` runs one machine), and through bindfs over tmpfs, in interleaved
# rounds; the best of each, with its ratio to bindfs.
# Usage: sudo ./scripts/bench-small-files.sh [MEMFIS_BINARY...]   (default: this tree's release build)
#        ROUNDS=5 for more rounds (default 3).
set -euo pipefail
shopt -s inherit_errexit # a failed copy inside $(...) stops the run, never times as a success
bins=()
for b in "$@"; do bins+=("$(realpath "$b")"); done
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
export PATH="$HOME/.cargo/bin:$PATH"
if [ ${#bins[@]} = 0 ]; then
  cargo build --release --locked -q
  bins=("$PWD/target/release/memfis")
fi
ROUNDS=${ROUNDS:-3}

work=$(mktemp -d /tmp/memfis-bench-small.XXXXXX)
pids=()
cleanup() {
  set +e
  for m in "$work/m" "$work/bindfs" "$work/backing" "$work/src"; do
    mountpoint -q "$m" && { fusermount3 -u "$m" 2>/dev/null || umount "$m"; }
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
mkdir -p "$work"/{src,backing,bindfs,m}
mount -t tmpfs -o size=1g tmpfs "$work/src"
mount -t tmpfs -o size=1g tmpfs "$work/backing"
make_small_set "$work/src"
port=$(free_port)
memcached -U 0 -l 127.0.0.1 -p "$port" -u root -m 2048 -M -I 8m -t 1 &
pids+=($!)
memcached -s "$work/mc.sock" -a 0666 -u root -m 2048 -M -I 8m -t 1 &
pids+=($!)
sleep 0.5
bindfs "$work/backing" "$work/bindfs"

secs() { echo "$EPOCHREALTIME"; }
timed() { local t0 t1; t0=$(secs); "$@"; t1=$(secs); python3 -c "print(f'{$t1-$t0:.3f}')"; }
# One copy and one removal into directory $1: "cp_seconds rm_seconds". The first round checks
# the copy (outside the timed spans).
copy_and_remove() {
  local c r
  c=$(timed cp -a "$work/src/small" "$1/s")
  sync
  if [ "$round" = 1 ]; then diff -r "$work/src/small" "$1/s" >/dev/null; fi
  r=$(timed rm -rf "$1/s")
  echo "$c $r"
}
results="$work/results"
: > "$results"
for round in $(seq "$ROUNDS"); do
  n=0
  for bin in "${bins[@]}"; do
    n=$((n + 1))
    for server in "127.0.0.1:$port" "unix:$work/mc.sock"; do
      "$bin" mount "$work/m" --create --server "$server" --prefix "memfis://small-$round-$n-${server%%:*}" \
        --log-file "$work/mount.log" 2>/dev/null
      row=$(copy_and_remove "$work/m")
      echo "$n ${server%%:*} $row" >> "$results"
      fusermount3 -u "$work/m"
    done
  done
  row=$(copy_and_remove "$work/bindfs")
  echo "bindfs - $row" >> "$results"
done

python3 - "$results" "${bins[@]}" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
builds = sys.argv[2:]
best = {}
for who, via, c, r in rows:
    k = (who, via)
    c, r = float(c), float(r)
    bc, br = best.get(k, (c, r))
    best[k] = (min(bc, c), min(br, r))
bc, br = best[("bindfs", "-")]
print(f"Best of {len(rows) // (2 * len(builds) + 1)} interleaved rounds, 2,000 files of 1-16 KB.")
print()
print("| through | cp -a | / bindfs | rm -rf | / bindfs |")
print("| --- | --- | --- | --- | --- |")
print(f"| bindfs over tmpfs | {bc:.3f} s | 1x | {br:.3f} s | 1x |")
for n, b in enumerate(builds, 1):
    for via, name in (("127.0.0.1", "loopback TCP"), ("unix", "a unix socket")):
        c, r = best[(str(n), via)]
        print(f"| {b}, memcached over {name} | {c:.3f} s | {bc / c:.2f}x | {r:.3f} s | {br / r:.2f}x |")
PY
