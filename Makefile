# Tracelight developer entry points. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo
CRD := crds/tracingpolicy.yaml
CHART_CRD := charts/tracelight/crds/tracingpolicy.yaml

.PHONY: help build test unit lint fmt crds bench e2e cluster-up cluster-down demo demo-down

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

build: agent-release ## Build both binaries, tracelight (operator) and tracelight-agent (sidecar), release
	$(CARGO) build --release --locked -p tracelight --bin tracelight

# The agent's release binary links glibc statically (static-pie): no dynamic loader and no shared
# libc/libm to page in, 0.9 MiB less resident at idle (4.2 against 5.1 MiB, measured the same way
# as `bench-agent-compare`). `--target` keeps the flag off build scripts and proc-macros, which
# must stay dynamic; the binary lands in $(AGENT_RELEASE).
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
AGENT_RELEASE := $(or $(CARGO_TARGET_DIR),target)/$(HOST_TRIPLE)/release
.PHONY: agent-release
agent-release: ## The agent's release binary, statically linked (in target/<host triple>/release)
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked -p tracelight-agent --bin tracelight-agent --target $(HOST_TRIPLE)

unit: ## Unit, golden and contract tests of every crate (no cluster)
	$(CARGO) test --locked --workspace --all-targets

# cargo-fuzz and cargo-deny, installed by e2e/prereqs.sh into the cache.
export PATH := $(or $(TRACELIGHT_CACHE),$(HOME)/.cache/tracelight)/tools/bin:$(PATH)

test: prereqs stop-demo lint unit test-alerts e2e e2e-agent e2e-traces fuzz ## Everything CI runs: lint, unit and golden tests, alert rules, end-to-end suite, agent interop, traces through the demo shop, brief fuzzing

.PHONY: prereqs stop-demo
prereqs: ## Check and install what the tests need (Debian packages as root, nightly, cargo-fuzz)
	@e2e/prereqs.sh test

stop-demo: ## Stop a running demo (the suites replace its release); the cluster keeps running
	@pid_file="$${TRACELIGHT_CACHE:-$$HOME/.cache/tracelight}/demo/operator.pid"; \
	if [[ -s "$$pid_file" && -d "/proc/$$(cat "$$pid_file")" ]]; then echo "stopping the demo first (make demo-down)"; e2e/demo.sh down; fi

.PHONY: test-alerts
test-alerts: ## Alert rules and dashboard: helm render, promtool check/test rules (built from Prometheus's Go module, cached), metrics exported
	@CARGO="$(CARGO)" e2e/alerts/test.sh

lint: ## rustfmt, clippy, rustdoc (broken doc links), cargo deny (licenses, bans, sources); warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets --features tracelight/e2e -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --workspace --no-deps --lib
	$(CARGO) deny --locked -L error check licenses bans sources

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate the CRD from the Rust types (crds/ and the chart)
	$(CARGO) run --quiet --locked -- crd > $(CRD).tmp
	mv $(CRD).tmp $(CRD)
	cp $(CRD) $(CHART_CRD)

cluster-up: ## Start the local control plane (etcd, kube-apiserver, ..., 3 kwok nodes); builds it once
	@e2e/cluster/up.sh >/dev/null

cluster-down: ## Stop the local control plane (data kept; e2e/cluster/down.sh --purge wipes it)
	e2e/cluster/down.sh

e2e: ## End-to-end suite on the local control plane (started if needed; left running)
	$(CARGO) build --locked --features e2e --bin tracelight
	@e2e/cluster/up.sh >/dev/null
	@mkdir -p "$${TRACELIGHT_CACHE:-$$HOME/.cache/tracelight}"
	@start=$$(date +%s); rc=0; \
	$(CARGO) test --locked --features e2e --test e2e -- --nocapture || rc=$$?; \
	echo "e2e suite: $$(( $$(date +%s) - start ))s (exit $$rc)"; exit $$rc

demo: ## Local demo: cluster, chart, operator, sample policies, an injected pod (see e2e/demo.sh)
	@e2e/prereqs.sh demo
	@e2e/demo.sh up

demo-down: ## Stop the demo's operator and remove what it created (the cluster keeps running)
	@e2e/demo.sh down

bench: ## Admission benchmark (criterion); last line is RESULT admission_us=... ungoverned_us=...
	$(CARGO) bench --locked --bench admission

.PHONY: e2e-agent
e2e-agent: ## Agent interop: Rust + Python SDKs -> agent -> real OpenTelemetry Collector (builds it once, cached)
	@OTELCOL="$$(e2e/collector/build.sh | tail -n1)" && PY="$$(e2e/collector/python-env.sh | tail -n1)" && \
	TRACELIGHT_OTELCOL="$$OTELCOL" TRACELIGHT_PYTHON="$$PY" \
	$(CARGO) test --locked -p tracelight-agent --test agent collector:: -- --ignored --nocapture

.PHONY: bench-join
bench-join: ## The operator's join of probe traces from 10,000 agents (synthetic); last line is RESULT agents=... join_ms=... join_rss_mib=...
	$(CARGO) bench --locked --bench join

.PHONY: bench-agent
bench-agent: ## Agent hot path (decode, sample, enrich, queue); last line is RESULT agent_spans_per_sec=...
	$(CARGO) bench --locked -p tracelight-agent --bench agent

.PHONY: bench-sampling
bench-sampling: ## Sampling: a budget under a realistic route mix (operator loop simulated) and the cost of 20 rules; last line is RESULT budget=... achieved=... error_pct=... rules_cost_pct=...
	$(CARGO) bench --locked -p tracelight-agent --bench sampling

.PHONY: bench-agent-compare
bench-agent-compare: agent-release ## Agent vs OpenTelemetry Collector, same pipeline and load; last line is RESULT throughput_ratio=...
	$(CARGO) build --release --locked -p tracelight-agent --example otlp_loadgen
	@REL="$${CARGO_TARGET_DIR:-target}/release" && \
	python3 e2e/collector/bench.py "$(AGENT_RELEASE)/tracelight-agent" "$$(e2e/collector/build.sh | tail -n1)" "$$REL/examples/otlp_loadgen"

.PHONY: bench-agent-red
bench-agent-red: agent-release ## Agent with RED metrics on vs off, same load, alternating rounds; last line is RESULT red_throughput_cost_pct=... red_idle_rss_delta_mib=...
	$(CARGO) build --release --locked -p tracelight-agent --example otlp_loadgen
	@REL="$${CARGO_TARGET_DIR:-target}/release" && \
	BENCH_AB=red python3 e2e/collector/bench.py "$(AGENT_RELEASE)/tracelight-agent" none "$$REL/examples/otlp_loadgen"

.PHONY: bench-agent-probes
bench-agent-probes: agent-release ## Agent with probe traces on vs off, same load, alternating rounds; last line is RESULT probes_throughput_cost_pct=... probes_idle_rss_delta_mib=...
	$(CARGO) build --release --locked -p tracelight-agent --example otlp_loadgen
	@REL="$${CARGO_TARGET_DIR:-target}/release" && \
	BENCH_AB=probes python3 e2e/collector/bench.py "$(AGENT_RELEASE)/tracelight-agent" none "$$REL/examples/otlp_loadgen"

.PHONY: fuzz
FUZZ_SECONDS ?= 60
fuzz: ## Fuzz the OTLP/HTTP decode path for FUZZ_SECONDS (cargo-fuzz, nightly); a crash input lands in fuzz/artifacts/
	@mkdir -p fuzz/corpus/otlp_http_decode
	cd fuzz && cargo +nightly fuzz run --sanitizer none --debug-assertions otlp_http_decode \
	  corpus/otlp_http_decode seeds/otlp_http_decode -- -max_total_time=$(FUZZ_SECONDS) -max_len=16384 -print_final_stats=1

.PHONY: e2e-traces
e2e-traces: ## Proof that traces flow: the demo shop injected on the local cluster, run on the host, traces checked in a real collector (root)
	$(CARGO) build --locked --features e2e --bin tracelight --example shop-inventory
	$(CARGO) build --locked -p tracelight-agent --bin tracelight-agent
	@e2e/cluster/up.sh >/dev/null
	@OTELCOL="$$(e2e/collector/build.sh | tail -n1)" && e2e/apps/prepare.sh >/dev/null && \
	start=$$(date +%s); rc=0; \
	TRACELIGHT_OTELCOL="$$OTELCOL" $(CARGO) test --locked --features e2e --test traces -- --nocapture || rc=$$?; \
	echo "e2e-traces: $$(( $$(date +%s) - start ))s (exit $$rc)"; exit $$rc

.PHONY: bench-scale
bench-scale: ## Rollout at scale on the local control plane (SCALE_NAMESPACES x SCALE_DEPLOYMENTS x SCALE_REPLICAS, SCALE_BATCH; default 200 x 10 x 3, batch 50), operator built in release mode; last line is RESULT workloads=...
	$(CARGO) build --locked --release --bin tracelight
	@e2e/cluster/up.sh >/dev/null
	@mkdir -p target && set -o pipefail && \
	TRACELIGHT_BIN=$(abspath $(or $(CARGO_TARGET_DIR),target))/release/tracelight \
	$(CARGO) test --locked --features e2e --test e2e bench_scale -- --ignored --nocapture 2>&1 | tee target/bench-scale.log
	@grep '^RESULT ' target/bench-scale.log | tail -n1
