#!/usr/bin/env bash
# README's first command: install what is missing, build, and serve examples/site from memcached
# (`memfis up`). Extra arguments go to `memfis up`, e.g. ./scripts/up.sh --port 9090.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/install-deps.sh
cargo build --release --locked
exec ./target/release/memfis up examples/site "$@"
