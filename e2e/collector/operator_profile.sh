#!/usr/bin/env bash
# Profiles `tracelight controller` for the code layout (see agent_order.py): runs the scale test
# at a small size on the local control plane with the operator under valgrind's callgrind, and
# leaves one callgrind dump per operator process in OUT_DIR (they cover start-up, certificates,
# admissions, reconciles, restarts, leaving and shutdown).
# Usage: operator_profile.sh TRACELIGHT_BIN OUT_DIR
set -euo pipefail
bin=$(realpath "$1")
out=$(mkdir -p "$2" && realpath "$2")
rm -f "$out"/cg.*
wrapper="$out/tracelight-under-callgrind"
# The allocator's options set (as `OPTIONS` in src/allocator.rs), so that the operator does not
# re-execute itself out of valgrind's sight.
cat >"$wrapper" <<SH
#!/bin/sh
MIMALLOC_ARENA_EAGER_COMMIT=0 MIMALLOC_PURGE_DELAY=100 exec valgrind --tool=callgrind \
  --callgrind-out-file=$out/cg.%p --dump-instr=no --compress-strings=no --compress-pos=no \
  --demangle=no "$bin" "\$@"
SH
chmod +x "$wrapper"
cd "$(dirname "$0")/../.."
e2e/cluster/up.sh >/dev/null
SCALE_NAMESPACES=3 SCALE_DEPLOYMENTS=4 SCALE_REPLICAS=1 SCALE_BATCH=4 TRACELIGHT_BIN="$wrapper" \
  cargo test --locked --features e2e --test e2e bench_scale -- --ignored --nocapture >"$out/run.log" 2>&1 \
  || { tail -n 30 "$out/run.log"; exit 1; }
ls "$out"/cg.*
