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
  [ip]=iproute2
  [nsenter]=util-linux
)
missing=()
for cmd in "${!package_of[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${package_of[$cmd]}")
done
active() { command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$1" 2>/dev/null; }
was_active=()
for svc in memcached nginx; do
  if active "$svc"; then was_active+=("$svc"); fi
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
# Debian starts a service it installs; memfis and its tests start their own on free ports, so
# only a service this run's install started is stopped again. One that was running before (a live
# site) is left alone.
for svc in memcached nginx; do
  if active "$svc" && [[ " ${was_active[*]} " != *" $svc "* ]]; then
    systemctl stop "$svc" || true
  fi
done
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
if ! command -v cargo >/dev/null 2>&1; then
  echo "memfis: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
