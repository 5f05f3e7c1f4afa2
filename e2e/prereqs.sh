#!/usr/bin/env bash
# Checks what `make test` and `make demo` need on this machine and installs what is missing:
# Debian packages (as root, else it stops with the exact command to run), the Rust toolchain
# components, and, for `make test` (argument `test`), the nightly toolchain, cargo-fuzz and cargo-deny
# (cached in $TRACELIGHT_CACHE/tools). Safe to run again: it only acts on what is missing.
#
# Usage: e2e/prereqs.sh [demo|test]
set -euo pipefail
WHAT=${1:-test}
TRACELIGHT_CACHE=${TRACELIGHT_CACHE:-$HOME/.cache/tracelight}
mkdir -p "$TRACELIGHT_CACHE"

need_apt=()
# openssl: the cluster's certificates; curl: health checks; ss (iproute2): naming the owner of a
# taken port; setsid (util-linux): the demo's background operator.
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
command -v ss >/dev/null || need_apt+=(iproute2)
command -v setsid >/dev/null || need_apt+=(util-linux)
# The demo shop's Rust service (cargo example shop-inventory, built by every `cargo test
# --all-targets`) links the system SQLite.
dpkg -s libsqlite3-dev >/dev/null 2>&1 || need_apt+=(libsqlite3-dev)
if [[ $WHAT == test ]]; then
  # The Python SDK virtualenv of the agent interop (e2e/collector/python-env.sh).
  python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3 python3-venv)
  # make e2e-traces: the demo shop's runtimes (Node.js + npm, a JDK + Maven) and its queue (Redis).
  command -v node >/dev/null || need_apt+=(nodejs)
  command -v npm >/dev/null || need_apt+=(npm)
  command -v java >/dev/null || need_apt+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null || need_apt+=(maven)
  command -v redis-server >/dev/null || need_apt+=(redis-server)
fi
if ((${#need_apt[@]})); then
  if ((EUID == 0)); then
    echo "installing: ${need_apt[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
  else
    echo "ERROR: missing packages. Run: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
fi

command -v go >/dev/null || {
  echo "ERROR: Go >= 1.26 is needed to build the test control plane (e2e/cluster/build.sh): https://go.dev/dl/" >&2
  exit 1
}
command -v rustup >/dev/null || {
  echo "ERROR: rustup is needed (the toolchain is pinned in rust-toolchain.toml): https://rustup.rs" >&2
  exit 1
}
# The pinned toolchain (rust-toolchain.toml) with rustfmt and clippy; rustup installs it on first use.
rustup component add rustfmt clippy >/dev/null 2>&1 || true

if [[ $WHAT == test ]]; then
  # make fuzz: a nightly toolchain and cargo-fuzz, installed once into the cache.
  rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal >&2
  export PATH="$TRACELIGHT_CACHE/tools/bin:$PATH"
  command -v cargo-fuzz >/dev/null ||
    cargo install --locked cargo-fuzz --version 0.13.2 --root "$TRACELIGHT_CACHE/tools" >&2
  # make lint: cargo deny (licenses, bans, sources; deny.toml).
  command -v cargo-deny >/dev/null ||
    cargo install --locked cargo-deny --version 0.20.2 --root "$TRACELIGHT_CACHE/tools" >&2
fi
