#!/usr/bin/env python3
"""Side-by-side benchmark: the same pipeline in the Tracelight agent and in the OpenTelemetry
Collector (OTLP/gRPC receiver -> sampling at 50% -> batch -> OTLP/gRPC exporter to a local sink),
driven by the same load generator on loopback at fixed rates and at maximum. The sink is the
load generator in `--sink` mode, which accepts requests without decoding them.

Measures, for the process under test only (from /proc): CPU seconds, spans/s per CPU-second, RSS
at idle and peak RSS under load; and the load generator's request latency (p99). Prints a table
and, as the last line, `RESULT throughput_ratio=... rss_ratio=... idle_rss_mib=...`.

The agent is the shipped binary (`tracelight-agent`, release profile, its allocator), so what is
measured is what runs in pods. Each binary starts with its pages evicted from the page cache
(`evict_from_page_cache`), so that RSS does not depend on how the file was last written.
rss_ratio is the collector's highest RSS over all rates over the agent's.

On a machine with two or more cores, the process under test runs on core 0 and the load
generator and the sink on core 1 (`pin`), so neither competes with the other for a core and the
ratio depends less on the machine's scheduler. Both processes under test get the same core.

Usage: bench.py AGENT_BIN COLLECTOR_BIN LOADGEN_BIN  (see `make bench-agent-compare`)

The agent's config is what the operator writes for a namespace: sampling at 50% and probe traces
at the default 1/64 (`probes` in the config).

With BENCH_AB=red (`make bench-agent-red`) or BENCH_AB=probes (`make bench-agent-probes`) it
compares the agent with itself instead, a feature on (the default) and off: RED metrics
(`--red-metrics=false`) or probe traces (no `probes` in the config). BENCH_ROUNDS rounds (default
3) alternate on and off, each from a cold page cache; it prints every round, the medians and,
last, `RESULT <feature>_throughput_cost_pct=... <feature>_rate_cost_pct=...
<feature>_idle_rss_delta_mib=...` (from the medians of spans per CPU-second at maximum load, of
the rate reached there, and of idle RSS; positive: the feature costs). The load is the
generator's spans, all server spans with a route: the worst case for RED. (BENCH_RED=1 is
BENCH_AB=red.)

BENCH_AGENT_FLAGS="--batch-bytes 262144 ..." passes extra flags to the agent, for tuning experiments.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

RATES = [1000, 10000, 50000, 0]  # spans/s; 0 = maximum
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / (1 << 20)


def rss_parts(pid):
    """(anonymous, file-backed) resident MiB: heap and stacks vs mapped code and data."""
    parts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                parts[line.split(":")[0]] = int(line.split()[1]) / 1024
    return parts.get("RssAnon", 0.0), parts.get("RssFile", 0.0)


def agent_config(dir_, sink_port, probes=True):
    path = os.path.join(dir_, "agent.yaml")
    with open(path, "w") as f:
        f.write(
            "generation: 1\npolicy: bench\ncollector:\n"
            f"  endpoint: http://127.0.0.1:{sink_port}\n  protocol: grpc\n  compression: gzip\n"
            "sampling:\n  ratio: 0.5\n"
            # The operator's default probe ratio (tracelight_contract::probe::DEFAULT_PROBE_RATIO).
            + ("probes:\n  ratio: 0.015625\n" if probes else "")
        )
    return path


def collector_config(dir_, port, sink_port):
    path = os.path.join(dir_, "otelcol.yaml")
    with open(path, "w") as f:
        f.write(
            f"""receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{port}
processors:
  probabilistic_sampler:
    sampling_percentage: 50
  batch: {{}}
exporters:
  otlp_grpc:
    endpoint: 127.0.0.1:{sink_port}
    tls:
      insecure: true
    compression: gzip
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    traces:
      receivers: [otlp]
      processors: [probabilistic_sampler, batch]
      exporters: [otlp_grpc]
"""
        )
    return path


def evict_from_page_cache(binary):
    """Drops the binary's pages from the page cache, so that the process under test maps its code
    as read from disk. The file-backed part of RSS depends on how the page cache holds the file,
    not only on the code that runs: the kernel maps code a whole page-cache folio (or 64 KiB of
    fault-around) at a time, and a file just written by the linker sits in small folios while one
    written by `cp` or read back through readahead sits in larger ones. The same agent binary
    measured 3.6 MiB of file-backed pages at idle fresh from the linker, 4.4 MiB as a fresh copy,
    3.6-3.8 MiB after this call. Both processes get the same treatment; no privileges needed."""
    fd = os.open(binary, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


PINNED = (os.cpu_count() or 1) >= 2


def pin(core):
    """A preexec_fn that runs the child on one core (none on a one-core machine)."""
    if not PINNED:
        return None
    return lambda: os.sched_setaffinity(0, {core})


MEASURED_CORE, LOAD_CORE = 0, 1


def start_agent(agent_bin, config, grpc, http, admin, extra=()):
    return subprocess.Popen(
        [agent_bin, "--config", config, "--otlp-grpc-port", str(grpc), "--otlp-http-port", str(http),
         "--admin-host", "127.0.0.1", "--admin-port", str(admin), *extra]
        # Extra agent flags for tuning experiments (the RESULT line is for the defaults).
        + os.environ.get("BENCH_AGENT_FLAGS", "").split(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin(MEASURED_CORE),
    )


def agent_drops(admin):
    """Spans the agent accepted but dropped (all reasons), from its /metrics."""
    if admin is None:
        return None
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("tracelight_agent_spans_dropped_total"))


def sink_bytes(stats):
    """Body bytes the sink has received so far (written by `otlp_loadgen --sink-stats`)."""
    try:
        with open(stats) as f:
            return int(f.read().strip() or 0)
    except FileNotFoundError:
        return 0


def run_load(loadgen, port, rate, pid, stats, admin=None):
    peak = [rss_mib(pid), rss_parts(pid)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            rss = rss_mib(pid)
            if rss > peak[0]:
                peak[:] = [rss, rss_parts(pid)]
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    cpu0 = cpu_seconds(pid)
    drops0 = agent_drops(admin)
    bytes0 = sink_bytes(stats)
    out = subprocess.run(
        [loadgen, "--target", f"127.0.0.1:{port}", "--rate", str(rate), "--seconds", str(SECONDS)],
        capture_output=True, text=True, check=True, preexec_fn=pin(LOAD_CORE),
    ).stdout
    time.sleep(1.0)  # let the pipeline finish exporting what it accepted
    cpu = cpu_seconds(pid) - cpu0
    time.sleep(0.2)  # the sink writes its count every 100 ms
    sent_bytes = sink_bytes(stats) - bytes0
    done.set()
    t.join()
    res = json.loads(out.strip().splitlines()[-1])
    res.update(cpu=cpu, peak_rss=peak[0], peak_parts=peak[1], per_cpu=res["sent"] / cpu if cpu > 0 else 0.0,
               bytes_per_span=sent_bytes / res["sent"] if res["sent"] else 0.0)
    # Accepted but not exported (queue full while the sink lags): shown so that a high accepted
    # rate cannot hide losses. The collector's own drops are not visible with its telemetry off.
    res["dropped"] = None if admin is None else agent_drops(admin) - drops0
    return res


def measure(name, proc, port, loadgen, stats, admin=None):
    wait_port(port)
    time.sleep(2)
    idle, idle_parts = rss_mib(proc.pid), rss_parts(proc.pid)
    # One second of load before the measured rates: the binary starts from a cold page cache, and
    # the first requests would otherwise wait for its code to be read from disk (a p99 of 45 ms
    # at 1k spans/s in one run). RSS stays comparable: the rates touch the same code.
    subprocess.run([loadgen, "--target", f"127.0.0.1:{port}", "--rate", "1000", "--seconds", "1"],
                   stdout=subprocess.DEVNULL, check=True, preexec_fn=pin(LOAD_CORE))
    rows = [run_load(loadgen, port, rate, proc.pid, stats, admin) for rate in RATES]
    proc.terminate()
    proc.wait(timeout=30)
    return {"name": name, "idle": idle, "idle_parts": idle_parts, "rows": rows}


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


# What each A/B comparison turns off: (agent flags, probes in the config).
AB_OFF = {"red": (("--red-metrics=false",), True), "probes": ((), False)}


def ab_compare(feature, agent_bin, loadgen):
    """`feature` on against off, alternating; see the module doc."""
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    runs = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as d:
        sink_grpc = free_port()
        stats = os.path.join(d, "sink-bytes")
        sink = subprocess.Popen([loadgen, "--sink", str(sink_grpc), "--sink-stats", stats], stdout=subprocess.DEVNULL,
                                preexec_fn=pin(LOAD_CORE))
        try:
            wait_port(sink_grpc)
            for i in range(rounds):
                # Alternate which goes first, so a drift of the machine's load falls on both.
                for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
                    port, admin = free_port(), free_port()
                    evict_from_page_cache(agent_bin)
                    extra, probes = ((), True) if mode == "on" else AB_OFF[feature]
                    config = agent_config(d, sink_grpc, probes=probes)
                    agent = start_agent(agent_bin, config, port, free_port(), admin, extra)
                    m = measure(f"{feature} {mode}", agent, port, loadgen, stats, admin)
                    at_max = m["rows"][-1]
                    runs[mode].append({"per_cpu": at_max["per_cpu"], "rate": at_max["sent"] / at_max["seconds"],
                                       "idle": m["idle"], "idle_anon": m["idle_parts"][0]})
                    r = runs[mode][-1]
                    print(f"round {i + 1} {feature} {mode:>3}: at max {r['rate']:>9.0f} spans/s, {r['per_cpu']:>9.0f} spans/cpu-s; "
                          f"idle RSS {r['idle']:.2f} MiB (anon {r['idle_anon']:.2f})", flush=True)
        finally:
            sink.terminate()
            sink.wait(timeout=30)
    med = {mode: {k: median([r[k] for r in runs[mode]]) for k in runs[mode][0]} for mode in runs}
    for mode in ("on", "off"):
        per_cpu = [r["per_cpu"] for r in runs[mode]]
        print(f"median {feature} {mode:>3}: {med[mode]['per_cpu']:.0f} spans/cpu-s (range {min(per_cpu):.0f}-{max(per_cpu):.0f}), "
              f"{med[mode]['rate']:.0f} spans/s, idle RSS {med[mode]['idle']:.2f} MiB (anon {med[mode]['idle_anon']:.2f})")
    cost = (1 - med["on"]["per_cpu"] / med["off"]["per_cpu"]) * 100 if med["off"]["per_cpu"] else 0.0
    rate_cost = (1 - med["on"]["rate"] / med["off"]["rate"]) * 100 if med["off"]["rate"] else 0.0
    rss = med["on"]["idle"] - med["off"]["idle"]
    print(f"RESULT {feature}_throughput_cost_pct={cost:.1f} {feature}_rate_cost_pct={rate_cost:.1f} "
          f"{feature}_idle_rss_delta_mib={rss:.2f}")


def main():
    agent_bin, collector_bin, loadgen = sys.argv[1:4]
    feature = os.environ.get("BENCH_AB") or ("red" if os.environ.get("BENCH_RED") == "1" else None)
    if feature:
        if feature not in AB_OFF:
            raise SystemExit(f"BENCH_AB={feature}: one of {', '.join(AB_OFF)}")
        return ab_compare(feature, agent_bin, loadgen)
    with tempfile.TemporaryDirectory() as d:
        # The destination of both pipelines: accepts without decoding (see otlp_loadgen), so that
        # on a 2-core machine it takes as little CPU as possible from the process measured.
        sink_grpc = free_port()
        stats = os.path.join(d, "sink-bytes")
        sink = subprocess.Popen([loadgen, "--sink", str(sink_grpc), "--sink-stats", stats], stdout=subprocess.DEVNULL,
                                preexec_fn=pin(LOAD_CORE))
        try:
            wait_port(sink_grpc)
            port, admin = free_port(), free_port()
            evict_from_page_cache(agent_bin)
            agent = start_agent(agent_bin, agent_config(d, sink_grpc), port, free_port(), admin)
            a = measure("agent", agent, port, loadgen, stats, admin)
            port = free_port()
            evict_from_page_cache(collector_bin)
            col = subprocess.Popen([collector_bin, "--config", collector_config(d, port, sink_grpc)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin(MEASURED_CORE))
            c = measure("collector", col, port, loadgen, stats)
        finally:
            sink.terminate()
            sink.wait(timeout=30)

    print(f"{'rate':>8} | {'agent spans/s':>13} {'cpu s':>6} {'spans/cpu-s':>12} {'rss MiB':>8} {'p99 ms':>7} |"
          f" {'otelcol spans/s':>15} {'cpu s':>6} {'spans/cpu-s':>12} {'rss MiB':>8} {'p99 ms':>7} | {'cpu ratio':>9}")
    for rate, ra, rc in zip(RATES, a["rows"], c["rows"]):
        label = "max" if rate == 0 else str(rate)
        ratio = ra["per_cpu"] / rc["per_cpu"] if rc["per_cpu"] else 0.0
        print(f"{label:>8} | {ra['sent'] / ra['seconds']:>13.0f} {ra['cpu']:>6.2f} {ra['per_cpu']:>12.0f} "
              f"{ra['peak_rss']:>8.1f} {ra['p99_us'] / 1000:>7.2f} | {rc['sent'] / rc['seconds']:>15.0f} {rc['cpu']:>6.2f} "
              f"{rc['per_cpu']:>12.0f} {rc['peak_rss']:>8.1f} {rc['p99_us'] / 1000:>7.2f} | {ratio:>9.2f}")
    print(f"idle RSS MiB: agent {a['idle']:.1f}, collector {c['idle']:.1f}")
    print(f"cores: {'measured process on core 0, load generator and sink on core 1' if PINNED else 'not pinned (one core)'}; "
          f"agent binary {os.path.getsize(agent_bin) / (1 << 20):.1f} MiB")
    # Both export gzip at the default level (6) to the same sink: what each sends for the same
    # spans shows that neither buys its CPU figure with a weaker compression.
    for rate, ra, rc in zip(RATES, a["rows"], c["rows"]):
        label = "max" if rate == 0 else str(rate)
        print(f"exported bytes per received span at {label}: agent {ra['bytes_per_span']:.1f}, "
              f"collector {rc['bytes_per_span']:.1f}")
    # Anonymous memory is the process's own (heap, stacks); file-backed is the mapped part of its
    # binary and libraries, shared page cache that depends on how code is laid out and cached.
    for p in (a, c):
        peak = max(p["rows"], key=lambda r: r["peak_rss"])
        print(f"{p['name']} RSS MiB anon+file: idle {p['idle_parts'][0]:.1f}+{p['idle_parts'][1]:.1f}, "
              f"peak {peak['peak_parts'][0]:.1f}+{peak['peak_parts'][1]:.1f}")
    for rate, ra in zip(RATES, a["rows"]):
        label = "max" if rate == 0 else str(rate)
        print(f"agent at {label}: {ra['dropped']:.0f} of {ra['sent']} accepted spans dropped (queue full, sampled-out not counted)")
    at_max_a, at_max_c = a["rows"][-1], c["rows"][-1]
    throughput_ratio = at_max_a["per_cpu"] / at_max_c["per_cpu"] if at_max_c["per_cpu"] else 0.0
    rss_ratio = max(r["peak_rss"] for r in c["rows"]) / max(r["peak_rss"] for r in a["rows"])
    print(f"RESULT throughput_ratio={throughput_ratio:.2f} rss_ratio={rss_ratio:.2f} idle_rss_mib={a['idle']:.1f}")


if __name__ == "__main__":
    main()
