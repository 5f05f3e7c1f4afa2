#!/usr/bin/env bash
# Prepares what the demo shop's "images" contain, from the public registries, cached outside the
# repository in $TRACELIGHT_SHOP_CACHE (default ~/.cache/tracelight/shop). The pod runner maps
# image names to these directories (e2e/traces/shop.rs; see e2e/apps/README.md).
#
#   python-app/    venv with the Python services' own dependencies (Flask, requests, Celery)
#   auto-python/   OpenTelemetry Python distro + instrumentations (`pip install --target`): the
#                  content of the Python auto-instrumentation image (/autoinstrumentation)
#   auto-nodejs/   OpenTelemetry Node SDK + auto-instrumentations and autoinstrumentation.js (npm)
#   auto-java/     javaagent.jar: the OpenTelemetry Java agent (Maven Central)
# and, from Debian's packages, redis-server for the queue.
#
# Idempotent: a part whose stamp matches its inputs is kept. Prints the cache dir on the last line.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${TRACELIGHT_SHOP_CACHE:-$HOME/.cache/tracelight/shop}"
PYTHON="${PYTHON:-python3}"
JAVA_AGENT_VERSION=2.21.0
mkdir -p "$CACHE"
# One run at a time: a second run's `rm -rf` of a part would race the first's install of it
# (seen: two runs started close together, `npm ci` and `rm` of node_modules at once).
if command -v flock >/dev/null; then
  exec 9>"$CACHE/.prepare.lock"
  flock 9
fi

fresh() { [[ -f "$CACHE/$1.stamp" ]] && [[ "$(cat "$CACHE/$1.stamp")" == "$2" ]]; }
stamp() { printf '%s' "$2" > "$CACHE/$1.stamp"; }
need() { command -v "$1" >/dev/null || { echo "error: $1 is required ($2)" >&2; exit 1; }; }

# The Python services' image: their own dependencies only, no OpenTelemetry.
key="$("$PYTHON" --version 2>&1) $(cat "$HERE/python-requirements.txt")"
if ! fresh python-app "$key"; then
  echo "python app image: venv from python-requirements.txt" >&2
  rm -rf "$CACHE/python-app"
  "$PYTHON" -m venv "$CACHE/python-app"
  "$CACHE/python-app/bin/pip" install --quiet --no-cache-dir -r "$HERE/python-requirements.txt" >&2
  stamp python-app "$key"
fi

# The Python auto-instrumentation image: like the upstream operator's, everything installed with
# `pip install --target` so that PYTHONPATH alone loads it (sitecustomize in
# opentelemetry/instrumentation/auto_instrumentation).
key="$("$PYTHON" --version 2>&1) $(cat "$HERE/instrumentation/python-requirements.txt")"
if ! fresh auto-python "$key"; then
  echo "python auto-instrumentation: pip install --target" >&2
  rm -rf "$CACHE/auto-python"
  "$PYTHON" -m pip install --quiet --no-cache-dir --target "$CACHE/auto-python" \
    -r "$HERE/instrumentation/python-requirements.txt" >&2
  stamp auto-python "$key"
fi

# The Node.js auto-instrumentation image: autoinstrumentation.js beside its node_modules.
src="$HERE/instrumentation/nodejs"
key="$(node --version 2>&1) $(cat "$src/package.json" "$src/package-lock.json" "$src/autoinstrumentation.js" | sha256sum)"
if ! fresh auto-nodejs "$key"; then
  need npm "Node.js and npm"
  echo "node.js auto-instrumentation: npm ci" >&2
  rm -rf "$CACHE/auto-nodejs"
  mkdir -p "$CACHE/auto-nodejs"
  cp "$src/package.json" "$src/package-lock.json" "$src/autoinstrumentation.js" "$CACHE/auto-nodejs/"
  (cd "$CACHE/auto-nodejs" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >&2)
  stamp auto-nodejs "$key"
fi

# The Java auto-instrumentation image: /javaagent.jar.
key="opentelemetry-javaagent $JAVA_AGENT_VERSION"
if ! fresh auto-java "$key"; then
  need mvn "Maven"
  echo "java auto-instrumentation: opentelemetry-javaagent $JAVA_AGENT_VERSION" >&2
  rm -rf "$CACHE/auto-java"
  mvn -q -B dependency:copy "-Dartifact=io.opentelemetry.javaagent:opentelemetry-javaagent:$JAVA_AGENT_VERSION" \
    -DoutputDirectory="$CACHE/auto-java" >&2
  mv "$CACHE/auto-java/opentelemetry-javaagent-$JAVA_AGENT_VERSION.jar" "$CACHE/auto-java/javaagent.jar"
  stamp auto-java "$key"
fi

# The queue's image: Redis from Debian's packages.
if ! command -v redis-server >/dev/null; then
  echo "queue image: apt-get install redis-server" >&2
  if [[ $(id -u) -eq 0 ]]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2
  else
    echo "error: redis-server is required (apt-get install redis-server)" >&2
    exit 1
  fi
fi
need java "a JDK 17+"

echo "$CACHE"
