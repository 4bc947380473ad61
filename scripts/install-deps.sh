#!/usr/bin/env bash
# Installs the Debian packages memfis, its tests and benchmarks need. Idempotent; run as root.
set -euo pipefail

declare -A package_of=(
  [memcached]=memcached
  [nginx]=nginx-light
  [fusermount3]=fuse3
  [bindfs]=bindfs
  [wrk]=wrk
  [php-fpm8.2]=php-fpm
  [pgrep]=procps
  [cc]=gcc
  [nutcracker]=nutcracker
  [rsync]=rsync
)
missing=()
for cmd in "${!package_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${package_of[$cmd]}")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "memfis: missing Debian packages: ${missing[*]} (run as root or apt-get install them)" >&2
    exit 1
  fi
  echo "memfis: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the packaged services; memfis starts its own on free ports instead.
for svc in memcached nginx; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
if ! command -v cargo >/dev/null 2>&1; then
  echo "memfis: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
