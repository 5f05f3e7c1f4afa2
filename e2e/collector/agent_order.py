#!/usr/bin/env python3
"""Writes the code layout of `tracelight agent` (a linker script): the functions the agent runs, grouped
so that they sit together in the binary instead of scattered over its 18 MiB of code.

Why: the kernel maps a binary's code into a process 64 KiB (or a whole large folio) around each
page it executes, so an agent that runs ~1.7 MiB of functions spread over the whole text
section gets ~8 MiB of it resident. Placed together, the same functions make ~1-2 MiB.

How: runs the agent under valgrind's callgrind through start-up and idle (phase 1), OTLP/gRPC
and OTLP/HTTP load with the admin endpoints scraped and a config reload (phase 2), and
SIGTERM (phase 3), and lists the functions of each phase in turn (within a phase, most
executed first) as a linker script. Names are written as patterns without the per-build hashes
(see `pattern`), so the script survives edits and dependency updates; a function added or
renamed since the profile only loses its placement. Regenerate after large changes to the agent.

The operator shares the binary: callgrind dumps of `tracelight controller` through a small
rollout (`operator_profile.sh`), given after OUT_FILE, add its functions after the agent's.

Usage: agent_order.py TRACELIGHT_BIN LOADGEN_BIN OUT_FILE [OPERATOR_DUMP...]
(OUT_FILE: a linker script, config/agent-layout.ld)
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench import free_port, wait_port  # same directory


def config(path, generation, sink, protocol, ratio):
    endpoint = f"http://127.0.0.1:{sink}"
    with open(path + ".tmp", "w") as f:
        f.write(f"generation: {generation}\npolicy: order\ncollector:\n  endpoint: {endpoint}\n"
                f"  protocol: {protocol}\n  compression: gzip\nsampling:\n  ratio: {ratio}\n")
    os.rename(path + ".tmp", path)


def defined_symbols(binary):
    """The function names `binary` defines (its symbol table)."""
    out = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
    names = {line.split()[-1] for line in out.splitlines() if len(line.split()) == 3}
    if not names:
        raise SystemExit(f"{binary} has no symbol table (stripped?): profile an unstripped release build")
    return names


def functions(dump, binary):
    """(self cost, name) of the functions of `binary` in one callgrind dump. Valgrind files code
    outside the binary's `.text` (the `.text.agent` section of a build already laid out) under
    the object `???`, so both count; names not defined by the binary are dropped by the caller."""
    costs, ob, fn, skip = {}, None, None, False
    for line in open(dump, errors="replace"):
        if skip:  # the inclusive cost of a call, not the caller's own
            skip = False
        elif line.startswith("calls="):
            skip = True
        elif line.startswith("ob="):
            ob = line[3:].strip()
        elif line.startswith("fn="):
            fn = line[3:].strip() if ob in (binary, "???") else None
        elif fn and line[:1].isdigit():
            parts = line.split()
            if len(parts) >= 2:
                costs[fn] = costs.get(fn, 0) + int(parts[1])
    return costs


def main():
    binary, loadgen, out = (os.path.abspath(p) for p in sys.argv[1:4])
    seen, order, defined = set(), [], defined_symbols(binary)
    operator_dumps = sys.argv[4:]
    with tempfile.TemporaryDirectory() as d:
        sink_grpc, sink_http = free_port(), free_port()
        sink = subprocess.Popen([binary, "agent", "--config", os.path.join(d, "absent.yaml"),
                                 "--otlp-grpc-port", str(sink_grpc), "--otlp-http-port", str(sink_http),
                                 "--admin-host", "127.0.0.1", "--admin-port", str(free_port())],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cfg = os.path.join(d, "agent.yaml")
        config(cfg, 1, sink_grpc, "grpc", 0.5)
        grpc, http, admin = free_port(), free_port(), free_port()
        prefix = os.path.join(d, "cg.out")
        agent = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}", "--dump-instr=no",
             "--compress-strings=no", "--compress-pos=no", "--demangle=no",
             binary, "agent", "--config", cfg, "--otlp-grpc-port", str(grpc), "--otlp-http-port", str(http),
             "--admin-host", "127.0.0.1", "--admin-port", str(admin), "--config-poll-ms", "500"],
            # Set (as `OPTIONS` in src/allocator.rs), so that the agent does not
            # re-execute itself out of valgrind's sight.
            env={**os.environ, "MIMALLOC_ARENA_EAGER_COMMIT": "0", "MIMALLOC_PURGE_DELAY": "100"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(admin, timeout=120)  # start-up under valgrind is slow
            time.sleep(5)
            dump = lambda: subprocess.run(["callgrind_control", "--dump", str(agent.pid)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            dump()  # phase 1: start-up and idle
            for path in ["/healthz", "/metrics", "/report"]:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=30).read()
            subprocess.run([loadgen, "--target", f"127.0.0.1:{grpc}", "--rate", "2000", "--seconds", "5"],
                           stdout=subprocess.DEVNULL, check=True)
            body = b""  # an empty protobuf request is valid
            for ctype, data in [("application/x-protobuf", body), ("application/json", b'{"resourceSpans":[]}')]:
                req = urllib.request.Request(f"http://127.0.0.1:{http}/v1/traces", data=data,
                                             headers={"content-type": ctype})
                urllib.request.urlopen(req, timeout=30).read()
            config(cfg, 2, sink_http, "http/protobuf", 0.25)  # live reload to the OTLP/HTTP exporter
            time.sleep(3)
            subprocess.run([loadgen, "--target", f"127.0.0.1:{grpc}", "--rate", "2000", "--seconds", "3"],
                           stdout=subprocess.DEVNULL, check=True)
            time.sleep(2)
            dump()  # phase 2: load
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=120)  # phase 3: shutdown, written at exit
        finally:
            if agent.poll() is None:
                agent.kill()
            sink.terminate()
            sink.wait(timeout=30)
        dumps = sorted((p for p in os.listdir(d) if p.startswith("cg.out")),
                       key=lambda p: int(p.rsplit(".", 1)[1]) if p[len("cg.out"):] else 1 << 30)
        for name in dumps:
            costs = functions(os.path.join(d, name), binary)
            for fn, _ in sorted(costs.items(), key=lambda kv: -kv[1]):
                fn = re.sub(r"'\d+$", "", fn)  # callgrind's recursion marker
                if fn not in defined or fn in seen:
                    continue
                seen.add(fn)
                order.append(fn)
    agent = len(order)
    for dump in operator_dumps:
        for fn, _ in sorted(functions(dump, binary).items(), key=lambda kv: -kv[1]):
            fn = re.sub(r"'\d+$", "", fn)
            if fn in defined and fn not in seen:
                seen.add(fn)
                order.append(fn)
    write_script([order[:agent], order[agent:]], out)
    print(f"{agent} functions of the agent, {len(order) - agent} more of the operator -> {out}")


# A legacy-mangled Rust symbol ends in a hash of its instance (`17h<16 hex>E`), and ThinLTO
# renames promoted local symbols with a `.llvm.<module hash>` suffix. Both change with any edit
# to the crate or its dependencies; the path before them does not. Patterns keep the path and
# wildcard the rest, so the list stays valid across builds: a renamed or new function only
# loses its placement, and all instances of a hot generic sit together.
LEGACY_HASH = re.compile(r"17h[0-9a-f]{16}E(\.llvm\.\d+)?$")
LTO_SUFFIX = re.compile(r"\.llvm\.\d+$")


def same_instance(symbol):
    """The symbol with its `.llvm.<module hash>` suffix as a glob: the same instance in any build.
    The suffix hashes the whole ThinLTO module, so an edit anywhere in it, even one that only
    shifts the line numbers its panic messages carry, renames every promoted function of the
    module; the instance hash (`17h...E`) before it stays."""
    return LTO_SUFFIX.sub(".llvm.*", symbol)


def pattern(symbol):
    """The symbol as a glob that any build of the same function matches, with all instances of a
    generic."""
    if LEGACY_HASH.search(symbol):
        return LEGACY_HASH.sub("17h*", symbol)
    if LTO_SUFFIX.search(symbol):
        return LTO_SUFFIX.sub(".llvm.*", symbol)
    return symbol


def write_script(groups, out):
    """An lld linker script that adds a `.text.agent` output section before the default `.text`
    (`INSERT BEFORE` keeps the default layout of everything else). Each group (the agent's
    functions, then the operator's) holds its profiled functions first, in profile order, by
    exact name or, for names with an LTO suffix, as the same instance in any build
    (`same_instance`), so that a fresh profile packs exactly the code that runs and edits do not
    unpack it; then the same names as patterns, which still group the code (with the other
    instances of its generics) once edits have changed the instance hashes. The agent's patterns
    come before the operator's names: after such an edit, an agent function still sits with the
    agent's code instead of beyond the operator's. Before names with LTO suffixes were kept as
    instances, a comment edit that shifted line numbers sent ~10% of the agent's functions into
    the patterns' region and added ~2 MiB to its resident code under load. One input description
    per name: the linker places descriptions in script order, and each section where the first
    description matching it stands."""
    seen, lines = set(), []
    for symbols in groups:
        for name in [same_instance(s) for s in symbols] + [pattern(s) for s in symbols]:
            if name not in seen and re.fullmatch(r"[A-Za-z0-9_.$*]+", name):
                seen.add(name)
                # LLVM names the section of a cold function (`#[cold]`, panics, growth paths)
                # `.text.unlikely.<name>`.
                lines.append(f"    *(.text.{name} .text.unlikely.{name})")
    with open(out, "w") as f:
        f.write("/* The code of `tracelight agent`, placed together in the order it runs (see build.rs).\n"
                " * Written by e2e/collector/agent_order.py (`make agent-order`) from a profile. */\n")
        f.write("SECTIONS {\n  .text.agent : {\n" + "\n".join(lines) + "\n  }\n}\nINSERT BEFORE .text;\n")


if __name__ == "__main__":
    main()
