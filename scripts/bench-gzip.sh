#!/usr/bin/env bash
# Benchmarks `--gzip` serving in one run: 200 HTML pages of 10-40 KB from the Rust book (and
# the Rust reference, as the book has fewer of that size), loaded
# with `memfis load --gzip`, requested with Accept-Encoding: gzip through the generated config,
# against nginx static with `gzip on` (level 1) and with `gzip_static on` (precompressed .gz files
# on tmpfs), one nginx worker each. Prints requests/s and ratios, and (unless BENCH_DOCS=0) how
# much of the Rust docs' raw bytes the store holds with --gzip.
# Usage: sudo ./scripts/bench-gzip.sh        (./scripts/bench.sh runs it at its end)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
export PATH="$HOME/.cargo/bin:$PATH"
BIN=${MEMFIS_BIN:-$PWD/target/release/memfis}
[ -x "$BIN" ] || cargo build --release --locked -q
ROUNDS=${ROUNDS:-3}
docs=$(rustc --print sysroot)/share/doc/rust/html

work=$(mktemp -d /tmp/memfis-bench-gzip.XXXXXX)
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  mountpoint -q "$work" && umount "$work"
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
mount -t tmpfs -o size=1g tmpfs "$work"
mkdir -p "$work"/{pages,static,nginx}

# 200 pages of 10-40 KB (the book, then the reference), the same files for every server.
find "$docs/book" "$docs/reference" -name '*.html' -size +10k -size -40k | sort | sed -n 1,200p > "$work/list"
while read -r f; do rel=${f#"$docs"/}; cp "$f" "$work/pages/${rel//\//_}"; done < "$work/list"
cp "$work"/pages/*.html "$work/static/"
gzip -k -6 "$work"/static/*.html
pages=$(ls "$work/pages" | wc -l)

port=$(free_port)
memcached -U 0 -l 127.0.0.1 -p "$port" -u root -m 512 -M -I 8m -t 1 &
pids+=($!)
sleep 0.5
"$BIN" load "$work/pages" --gzip --server "127.0.0.1:$port" --prefix memfis://gz >/dev/null
# The same pages in a memcached on a unix socket, as `memfis up` runs one for one machine.
memcached -s "$work/mc.sock" -a 0666 -u root -m 512 -M -I 8m -t 1 &
pids+=($!)
sleep 0.5
"$BIN" load "$work/pages" --gzip --server "unix:$work/mc.sock" --prefix memfis://gz >/dev/null

store_port=$(free_port); sock_port=$(free_port); gzip_port=$(free_port); gzip_static_port=$(free_port)
"$BIN" nginx-config --server "127.0.0.1:$port" --prefix memfis://gz --listen "127.0.0.1:$store_port" > "$work/nginx/store.conf"
"$BIN" nginx-config --server "unix:$work/mc.sock" --prefix memfis://gz --name gz_sock \
  --listen "127.0.0.1:$sock_port" > "$work/nginx/sock.conf"
write_nginx_conf 1 "\
    include $work/nginx/store.conf;
    include $work/nginx/sock.conf;
    server { listen 127.0.0.1:$gzip_port; root $work/pages; gzip on; gzip_comp_level 1; }
    server { listen 127.0.0.1:$gzip_static_port; root $work/static; gzip_static on; }"
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)
# Until every server listens.
for _ in $(seq 50); do
  curl -s -o /dev/null "http://127.0.0.1:$store_port/" && curl -s -o /dev/null "http://127.0.0.1:$sock_port/" && curl -s -o /dev/null "http://127.0.0.1:$gzip_port/" \
    && curl -s -o /dev/null "http://127.0.0.1:$gzip_static_port/" && break
  sleep 0.1
done

# A client without gzip gets the source's bytes; one with gzip gets gzip that unpacks to them.
first=$(ls "$work/pages" | sed -n 1p)
curl -sf "http://127.0.0.1:$store_port/$first" | cmp - "$work/pages/$first" && echo "plain client: bytes identical to the source"
curl -sf -H 'Accept-Encoding: gzip' "http://127.0.0.1:$store_port/$first" | gzip -dc | cmp - "$work/pages/$first" \
  && echo "gzip client: unpacks to the source"
curl -sf -H 'Accept-Encoding: gzip' "http://127.0.0.1:$sock_port/$first" | gzip -dc | cmp - "$work/pages/$first" \
  && echo "gzip client over the unix socket: unpacks to the source"

ls "$work/pages" | python3 -c '
import sys
paths = ["/" + l.strip() for l in sys.stdin if l.strip()]
print("local paths = {" + ",".join(f"\"{p}\"" for p in paths) + "}")
print("local i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(nil, paths[i], {[\"Accept-Encoding\"] = \"gzip\"})\nend")
' > "$work/urls.lua"
wrk_rps() {
  wrk -t1 -c32 -d8s -s "$work/urls.lua" "http://127.0.0.1:$1" | awk '/Requests\/sec/ {printf "%.0f\n", $2}'
}
store=(); sock=(); gz=(); gzs=()
for _ in $(seq "$ROUNDS"); do
  store+=("$(wrk_rps "$store_port")"); sock+=("$(wrk_rps "$sock_port")"); gz+=("$(wrk_rps "$gzip_port")"); gzs+=("$(wrk_rps "$gzip_static_port")")
done
best() { printf '%s\n' "$@" | sort -n | tail -1; }
s=$(best "${store[@]}"); u=$(best "${sock[@]}"); g=$(best "${gz[@]}"); gs=$(best "${gzs[@]}")

ratio_line=""
if [ "${BENCH_DOCS:-1}" = 1 ]; then
  docs_port=$(free_port)
  memcached -U 0 -l 127.0.0.1 -p "$docs_port" -u root -m 2048 -M -I 16m -t 1 &
  pids+=($!)
  sleep 0.5
  "$BIN" load "$docs" --gzip --server "127.0.0.1:$docs_port" --prefix memfis://docs >/dev/null
  ratio_line=$(python3 - "$docs_port" "$(du -sb "$docs" | cut -f1)" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); s.sendall(b"stats\r\n")
buf = b""
while not buf.endswith(b"END\r\n"): buf += s.recv(65536)
st = dict(l.split(" ")[1:3] for l in buf.decode().splitlines() if l.startswith("STAT "))
raw = int(sys.argv[2])
print(f"Rust docs with --gzip: the store holds {int(st['bytes']) / 2**20:.0f} MB (memcached's `bytes`, metadata included) of {raw / 2**20:.0f} MB raw: {int(st['bytes']) / raw:.0%}")
PY
)
fi

python3 - <<PY
s, u, g, gs = $s, $u, $g, $gs
print()
print(f"| wrk, $pages HTML pages of 10-40 KB, Accept-Encoding: gzip, 1 worker, 32 connections, 8 s | requests/s | memfis / it |")
print("| --- | --- | --- |")
print(f"| memfis --gzip store over TCP, generated config | {s} | 1x |")
print(f"| memfis --gzip store over a unix socket (as memfis up runs it) | {u} | {s / u:.2f}x |")
print(f"| nginx static, gzip on (level 1) | {g} | {s / g:.2f}x |")
print(f"| nginx static, gzip_static on (.gz files on tmpfs) | {gs} | {s / gs:.2f}x |")
print()
print(f"Unix socket / gzip_static: {u / gs:.2f}x; TCP / gzip_static: {s / gs:.2f}x")
print()
print("$ratio_line")
PY
