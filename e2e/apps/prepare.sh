#!/usr/bin/env bash
# Prepares what the demo shop's "images" contain, from the public registries, cached outside the
# repository in $TRACELIGHT_SHOP_CACHE (default ~/.cache/tracelight/shop). The pod runner
# (e2e/traces/runner) maps image names to these directories; see e2e/apps/README.md.
#
#   python-app/      venv with the frontend's own dependencies (Flask, requests): the app image
#   auto-python/     the OpenTelemetry Python distro + instrumentations, `pip install --target`:
#                    the content of the Python auto-instrumentation image (/autoinstrumentation)
#
# Idempotent: a part whose stamp file matches its package list is kept. Prints the cache dir on
# the last line.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${TRACELIGHT_SHOP_CACHE:-$HOME/.cache/tracelight/shop}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$CACHE"

# Runs "$@" unless $1's stamp matches $2 (the inputs); writes the stamp afterwards.
fresh() { [[ -f "$CACHE/$1.stamp" ]] && [[ "$(cat "$CACHE/$1.stamp")" == "$2" ]]; }
stamp() { printf '%s' "$2" > "$CACHE/$1.stamp"; }

# The frontend's image: its own dependencies only, no OpenTelemetry.
key="$("$PYTHON" --version 2>&1) $(cat "$HERE/frontend/requirements.txt")"
if ! fresh python-app "$key"; then
  echo "python app image: venv with $(tr '\n' ' ' < "$HERE/frontend/requirements.txt")" >&2
  rm -rf "$CACHE/python-app"
  "$PYTHON" -m venv "$CACHE/python-app"
  "$CACHE/python-app/bin/pip" install --quiet --no-cache-dir -r "$HERE/frontend/requirements.txt" >&2
  stamp python-app "$key"
fi

# The Python auto-instrumentation image: like the upstream operator's image, everything installed
# with `pip install --target` so that PYTHONPATH alone loads it (sitecustomize in
# opentelemetry/instrumentation/auto_instrumentation).
key="$("$PYTHON" --version 2>&1) $(cat "$HERE/instrumentation/python-requirements.txt")"
if ! fresh auto-python "$key"; then
  echo "python auto-instrumentation: pip install --target" >&2
  rm -rf "$CACHE/auto-python"
  "$PYTHON" -m pip install --quiet --no-cache-dir --target "$CACHE/auto-python" \
    -r "$HERE/instrumentation/python-requirements.txt" >&2
  stamp auto-python "$key"
fi

echo "$CACHE"
