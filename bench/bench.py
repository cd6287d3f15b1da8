#!/usr/bin/python3
"""Outpost's benchmark suite: outpost-serve against raw ONNX Runtime.

Run through scripts/bench.sh (`make bench`), which builds the tools and
generates the models first. Standard library only.

For each model: raw_ort (in-process ONNX Runtime, same session options) at
every concurrency, then outpost-serve over HTTP with binary tensors, shared
memory and JSON (driven by loadgen) and over gRPC (grpc_loadgen, raw
contents) at every concurrency, then idle RSS. For
mobilenet_v2 also start-to-ready (median of 5) and the RSS of bare_load, a
process that only loads the model. Writes a markdown report.

Environment overrides (all optional):
  BENCH_MODELS="tiny mobilenet_v2 resnet50"   models to run
  BENCH_CONCURRENCY="1 4 16"                  concurrencies
  BENCH_SECONDS=N                             measured seconds per point (default per model)
  BENCH_WARMUP=N                              warm-up seconds per point (default 1)
  BENCH_EXTRA=0                               skip the instance_count variant
  BENCH_PAIRS=5                               raw/HTTP pairs for the mobilenet_v2 targets
  BENCH_QUIET_WAIT=5                          before each point, wait up to this many
                                              seconds for other processes to go quiet
  BENCH_MODES="binary shm json grpc"          outpost-serve paths to measure
  BENCH_SECTION=grpc                          only raw, HTTP binary and gRPC, no targets:
                                              write just the `<!-- begin: grpc -->` section
                                              of the report, leaving the rest as it is
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time

DEFAULT_SECONDS = {"tiny": 5, "mobilenet_v2": 10, "resnet50": 4}
TARGET_MODEL = "mobilenet_v2"
FLOOR_MODEL = "floor_224"
QUIET_WAIT_S = float(os.environ.get("BENCH_QUIET_WAIT", "5"))
PAIRS = int(os.environ.get("BENCH_PAIRS", "5"))
PAIR_SLICE_S = 2
# The session options raw_ort and bare_load use (bench/bench_common.h), spelled
# out so that a change of outpost-serve's defaults cannot skew the comparison.
CONFIG_YAML = """\
# Written by bench/bench.py: the session options raw_ort and bare_load use.
graph_optimization: all
intra_op_threads: 0
inter_op_threads: 1
cpu_arena: true
"""


class BenchError(Exception):
    pass


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def system_busy_s():
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait_s, threshold=0.3):
    """On a shared machine, waits (at most max_wait_s) until other processes use
    less than `threshold` cores, so a point is not measured during someone's build.
    Returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        b0 = system_busy_s()
        time.sleep(0.5)
        if (system_busy_s() - b0) / 0.5 < threshold or time.monotonic() - t0 >= max_wait_s:
            return time.monotonic() - t0


def run_tool(cmd, timeout, quiet=True):
    """Runs a bench tool that prints one JSON line; adds its CPU seconds, wall
    time and the machine's busy CPU seconds over the same time."""
    waited = wait_quiet(QUIET_WAIT_S) if quiet else 0.0
    cpu0, busy0, t0 = children_cpu(), system_busy_s(), time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall, cpu = time.monotonic() - t0, children_cpu() - cpu0
    busy = system_busy_s() - busy0
    if p.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    if p.stderr.strip():
        log(p.stderr.strip())
    result = json.loads(p.stdout.strip().splitlines()[-1])
    result["cpu_s"], result["wall_s"], result["busy_s"] = cpu, wall, busy
    result["quiet_wait_s"] = waited
    return result


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def link_or_copy(src, dst):
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_repo(root, model, model_path, extra_config="", intra_op_threads=0):
    """A model repository holding only `model`, version 1."""
    vdir = os.path.join(root, model, "1")
    os.makedirs(vdir, exist_ok=True)
    link_or_copy(model_path, os.path.join(vdir, "model.onnx"))
    with open(os.path.join(root, model, "config.yaml"), "w") as f:
        f.write(CONFIG_YAML.replace("intra_op_threads: 0",
                                    f"intra_op_threads: {intra_op_threads}") + extra_config)
    return root


def transport_floor(tools, args, workdir):
    """outpost-serve at concurrency 1 on floor_224: mobilenet_v2's input and
    output sizes with no compute, so its p50 is what serving costs before the
    model runs (both copies through the loopback, the server's handling,
    loadgen) - the floor under the c=1 target's difference."""
    model_path = os.path.join(args.models, FLOOR_MODEL, "1", "model.onnx")
    if not os.path.exists(model_path):
        log(f"{FLOOR_MODEL}: missing, floor not measured (scripts/gen_models.py makes it)")
        return None
    repo = make_repo(os.path.join(args.work, "repos", FLOOR_MODEL), FLOOR_MODEL, model_path)
    server = Server(tools["serve"], repo, workdir, FLOOR_MODEL)
    server.start()
    try:
        runs = []
        for _ in range(PAIRS):
            before = duration_sums(server.metrics(), FLOOR_MODEL)
            r = run_tool([tools["loadgen"], "--port", str(server.port), "--model", FLOOR_MODEL,
                          "--concurrency", "1", "--warmup", "0.5", "--duration",
                          str(PAIR_SLICE_S)], 120, quiet=False)
            r["server"] = server_breakdown(before, duration_sums(server.metrics(), FLOOR_MODEL))
            runs.append(r)
    finally:
        server.stop()
    log(f"{FLOOR_MODEL}: c=1 p50 {[round(r['p50_ms'], 3) for r in runs]} ms")
    return {"runs": runs, "request_bytes": runs[0].get("request_bytes")}


def http_get(port, path, timeout=2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Server:
    """One outpost-serve process on a free port."""

    def __init__(self, binary, repo, workdir, name):
        self.binary, self.repo = binary, repo
        self.port_file = os.path.join(workdir, f"{name}.port")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc, self.port, self.grpc_port = None, None, None

    def start(self, timeout=120.0, interval=0.002):
        """Starts the server and polls GET /v2/health/ready every `interval` s.
        Returns the seconds from spawn to the first 200."""
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        logf = open(self.log_path, "ab")
        cmd = [self.binary, "--model-repository", self.repo, "--http-port", "0",
               "--grpc-port", "0", "--port-file", self.port_file]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"outpost-serve exited {self.proc.returncode} before ready; "
                                 f"log {self.log_path}:\n{self.log_tail()}")
            if self.port is None:
                try:
                    with open(self.port_file) as f:
                        ports = json.load(f)
                        self.port, self.grpc_port = int(ports["http"]), int(ports["grpc"])
                except (OSError, ValueError, KeyError):
                    pass
            if self.port is not None:
                try:
                    status, _ = http_get(self.port, "/v2/health/ready", timeout=1.0)
                    if status == 200:
                        return time.monotonic() - t0
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"outpost-serve not ready after {timeout} s; log {self.log_path}")
            time.sleep(interval)

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def metrics(self):
        try:
            status, body = http_get(self.port, "/metrics")
            return body.decode(errors="replace") if status == 200 else ""
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc, self.port, self.grpc_port = None, None, None


METRIC_RE = re.compile(
    r'^outpost_inference_(request|queue|compute)_duration_seconds_(sum|count)\{([^}]*)\}\s+(\S+)')


def duration_sums(text, model):
    """{(kind, 'sum'|'count'): value} summed over the model's series."""
    out = {}
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if m and f'model="{model}"' in m.group(3):
            key = (m.group(1), m.group(2))
            out[key] = out.get(key, 0.0) + float(m.group(4))
    return out


def server_breakdown(before, after):
    """Mean request/queue/compute milliseconds inside the server between two scrapes."""
    res = {}
    for kind in ("request", "queue", "compute"):
        n = after.get((kind, "count"), 0) - before.get((kind, "count"), 0)
        s = after.get((kind, "sum"), 0) - before.get((kind, "sum"), 0)
        if n > 0:
            res[kind] = s / n * 1000
    return res


def bare_rss(bare_bin, model_path, warmup_runs, settle):
    p = subprocess.Popen([bare_bin, "--model", model_path, "--warmup-runs", str(warmup_runs)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 120)
        line = p.stdout.readline() if ready else ""
        if line.strip() != "READY":
            raise BenchError(f"bare_load did not print READY: {line!r} {p.stderr.read()[-2000:]}")
        time.sleep(settle)
        return rss_kb(p.pid)
    finally:
        p.kill()
        p.wait()


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1048576:.1f} GiB RAM"
    return {"cpu": cpu, "nproc": os.cpu_count(), "kernel": platform.release(), "mem": mem}


def git_rev(root):
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + (" (with uncommitted changes in src/)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def paired_targets(tools, model, model_path, server, rows):
    """The two latency/throughput targets, measured as PAIRS runs alternating
    raw and HTTP binary slices, so both sides see the same background load on a
    shared machine. Saturation uses the concurrency at which each side was
    fastest in the sequential table."""
    def best_c(path):
        cand = [r for r in rows if r["path"] == path]
        return max(cand, key=lambda r: r["throughput_rps"])["concurrency"]

    out = {"pairs": PAIRS, "slice_s": PAIR_SLICE_S}
    for name, raw_c, http_c, mode in (
            ("c1", 1, 1, "binary"),
            ("saturation", best_c("raw"), best_c("http binary"), "binary"),
            ("c1_shm", 1, 1, "shm"),
            ("saturation_shm", best_c("raw"), best_c("http shm"), "shm")):
        pairs = []
        for _ in range(PAIRS):
            raw = run_tool([tools["raw_ort"], "--model", model_path, "--concurrency", str(raw_c),
                            "--warmup", "0.5", "--duration", str(PAIR_SLICE_S)], 120, quiet=False)
            http = run_tool([tools["loadgen"], "--port", str(server.port), "--model", model,
                             "--mode", mode, "--concurrency", str(http_c), "--warmup", "0.5",
                             "--duration", str(PAIR_SLICE_S)], 120, quiet=False)
            pair = {"raw": raw, "http": http}
            if name == "c1":
                # The least any server over loopback TCP adds, in the same pair.
                pair["tcp"] = run_tool([tools["tcp_floor"], "--model", model_path,
                                        "--request-bytes", str(http["request_bytes"]),
                                        "--warmup", "0.5", "--duration", str(PAIR_SLICE_S)],
                                       120, quiet=False)
            pairs.append(pair)
        out[name] = {"raw_c": raw_c, "http_c": http_c, "pairs": pairs}
        log(f"  paired {name}: raw c={raw_c} p50 "
            f"{[round(p['raw']['p50_ms'], 3) for p in pairs]} rps "
            f"{[round(p['raw']['throughput_rps'], 1) for p in pairs]}; http c={http_c} p50 "
            f"{[round(p['http']['p50_ms'], 3) for p in pairs]} rps "
            f"{[round(p['http']['throughput_rps'], 1) for p in pairs]}"
            + (f"; tcp_floor p50 {[round(p['tcp']['p50_ms'], 3) for p in pairs]}"
               if "tcp" in pairs[0] else ""))
    return out


def paired_instances(tools, model, model_path, server, rows, label):
    """Saturation of the throughput configuration (one single-threaded session
    per core) against raw ONNX Runtime with the same session options
    (intra-op threads 1), each at its fastest concurrency in the table, as
    PAIRS alternating slices."""
    def best_c(path):
        return max((r for r in rows if r["path"] == path),
                   key=lambda r: r["throughput_rps"])["concurrency"]
    raw_c, http_c = best_c("raw intra_op_threads=1"), best_c(f"{label} binary")
    pairs = []
    for _ in range(PAIRS):
        raw = run_tool([tools["raw_ort"], "--model", model_path, "--concurrency", str(raw_c),
                        "--intra-op-threads", "1", "--warmup", "0.5",
                        "--duration", str(PAIR_SLICE_S)], 120, quiet=False)
        http = run_tool([tools["loadgen"], "--port", str(server.port), "--model", model,
                         "--mode", "binary", "--concurrency", str(http_c), "--warmup", "0.5",
                         "--duration", str(PAIR_SLICE_S)], 120, quiet=False)
        pairs.append({"raw": raw, "http": http})
    log(f"  paired saturation ({label}): raw intra 1 c={raw_c} rps "
        f"{[round(p['raw']['throughput_rps'], 1) for p in pairs]}; http c={http_c} rps "
        f"{[round(p['http']['throughput_rps'], 1) for p in pairs]}")
    return {"raw_c": raw_c, "http_c": http_c, "pairs": pairs, "label": label}


def run_model(args, model, tools, seconds, warmup, concurrencies, results):
    model_path = os.path.join(args.models, model, "1", "model.onnx")
    if not os.path.exists(model_path):
        raise BenchError(f"{model_path} missing: scripts/bench.sh generates it")
    timeout = warmup + seconds + 120
    rows = []
    log(f"{model}: raw ONNX Runtime")
    for c in concurrencies:
        r = run_tool([tools["raw_ort"], "--model", model_path, "--concurrency", str(c),
                      "--warmup", str(warmup), "--duration", str(seconds)], timeout)
        r["path"] = "raw"
        results["ort_version"] = r.get("ort_version", "")
        rows.append(r)
        log(f"  raw c={c}: p50 {r['p50_ms']:.3f} ms, {r['throughput_rps']:.1f} req/s")

    workdir = os.path.join(args.work, "logs")
    os.makedirs(workdir, exist_ok=True)
    section = os.environ.get("BENCH_SECTION")
    modes = tuple(os.environ.get("BENCH_MODES", "binary grpc" if section else
                                 "binary shm json grpc").split())
    variants = [("http", "", modes)]
    if model == TARGET_MODEL and os.environ.get("BENCH_EXTRA", "1") != "0" and not section:
        # One single-threaded session per core: no intra-op synchronisation
        # for the io thread or the client to stall. Raw ONNX Runtime with the
        # same session options runs beside it.
        n = os.cpu_count() or 2
        variants.append((f"http instance_count={n},intra_op_threads=1",
                         f"instance_count: {n}\n", ("binary",)))
        for c in sorted({n, 16}):
            r = run_tool([tools["raw_ort"], "--model", model_path, "--concurrency", str(c),
                          "--intra-op-threads", "1", "--warmup", str(warmup),
                          "--duration", str(seconds)], timeout)
            r["path"] = "raw intra_op_threads=1"
            rows.append(r)
            log(f"  raw intra_op_threads=1 c={c}: {r['throughput_rps']:.1f} req/s")
    info = {}
    for label, extra, modes in variants:
        tag = "default" if not extra else "instances"
        repo = make_repo(os.path.join(args.work, "repos", f"{model}-{tag}"), model, model_path,
                         extra, intra_op_threads=1 if extra else 0)
        server = Server(tools["serve"], repo, workdir, f"{model}-{tag}")
        log(f"{model}: starting outpost-serve ({label})")
        ready_s = server.start()
        try:
            if not extra:
                time.sleep(1.0)
                info["idle_rss_kb"] = rss_kb(server.proc.pid)
                info["ready_s_first"] = ready_s
            for mode in modes:
                for c in concurrencies:
                    before = duration_sums(server.metrics(), model)
                    scpu0 = proc_cpu_s(server.proc.pid)
                    if mode == "grpc":
                        tool, port = tools["grpc_loadgen"], server.grpc_port
                    else:
                        tool, port = tools["loadgen"], server.port
                    cmd = [tool, "--port", str(port), "--model", model, "--concurrency", str(c),
                           "--warmup", str(warmup), "--duration", str(seconds)]
                    if mode != "grpc":
                        cmd += ["--mode", mode]
                    r = run_tool(cmd, timeout)
                    r["server_cpu_s"] = proc_cpu_s(server.proc.pid) - scpu0
                    r["server"] = server_breakdown(before, duration_sums(server.metrics(), model))
                    r["path"] = "grpc" if mode == "grpc" and not extra else f"{label} {mode}"
                    rows.append(r)
                    log(f"  {r['path']} c={c}: p50 {r['p50_ms']:.3f} ms, "
                        f"{r['throughput_rps']:.1f} req/s, errors {r['errors']}")
            if extra and "paired" in results:
                results["paired"]["saturation_instances"] = paired_instances(
                    tools, model, model_path, server, rows, label)
            if not extra:
                info["loaded_rss_kb"] = rss_kb(server.proc.pid)
                if model == TARGET_MODEL and not section:
                    results["paired"] = paired_targets(tools, model, model_path, server, rows)
                    results["floor"] = transport_floor(tools, args, workdir)
        finally:
            server.stop()
    results["models"][model] = {"rows": rows, "seconds": seconds, "warmup": warmup, **info}

    if model == TARGET_MODEL and not section:
        repo = os.path.join(args.work, "repos", f"{model}-default")
        times = []
        for i in range(5):
            wait_quiet(QUIET_WAIT_S)
            server = Server(tools["serve"], repo, workdir, f"{model}-startup")
            try:
                times.append(server.start())
            finally:
                server.stop()
        log(f"{model}: start-to-ready {[round(t * 1000, 1) for t in times]} ms")
        results["startup_s"] = times
        results["bare_rss_kb"] = bare_rss(tools["bare_load"], model_path, 0, 1.0)
        results["bare_rss_warm_kb"] = bare_rss(tools["bare_load"], model_path, 1, 1.0)
        log(f"{model}: RSS serve idle {info['idle_rss_kb']} kB, bare {results['bare_rss_kb']} kB, "
            f"bare+1 run {results['bare_rss_warm_kb']} kB")


def fmt_ms(x):
    return f"{x:.3f}" if x is not None else "–"


def fmt_ratio(x):
    return f"{x:.2f}x" if x is not None else "–"


def c1_row(pairs, label):
    """Target row: median per-pair p50 difference, served vs raw, within 0.1 ms."""
    diffs = [p["http"]["p50_ms"] - p["raw"]["p50_ms"] for p in pairs]
    d = statistics.median(diffs)
    return (f"| {label} | serve {statistics.median(p['http']['p50_ms'] for p in pairs):.3f} ms, "
            f"raw {statistics.median(p['raw']['p50_ms'] for p in pairs):.3f} ms; difference "
            f"{d:+.3f} ms (pairs: {', '.join(f'{x:+.3f}' for x in diffs)}) | "
            f"{'PASS' if d <= 0.1 else 'FAIL'} |")


def tcp_floor_row(pairs):
    """Informational row: what the least possible server over loopback TCP
    (tcp_floor: blocking recv of the same bytes, Run on them in place, send
    the same answer size; no HTTP) costs beside raw in the same pairs, and
    how much outpost-serve adds on top of that."""
    floor = [p["tcp"]["p50_ms"] - p["raw"]["p50_ms"] for p in pairs]
    above = [p["http"]["p50_ms"] - p["tcp"]["p50_ms"] for p in pairs]
    rps = [p["tcp"]["throughput_rps"] / p["raw"]["throughput_rps"] for p in pairs]
    return (f"| (the least a server over loopback TCP adds: `tcp_floor`, the same request bytes "
            f"received with blocking `recv`, `Run` on them in place, the same answer size sent "
            f"back, no HTTP; third member of the pairs above; informational) | tcp_floor "
            f"{statistics.median(p['tcp']['p50_ms'] for p in pairs):.3f} ms: "
            f"{statistics.median(floor):+.3f} ms over raw (pairs: "
            f"{', '.join(f'{x:+.3f}' for x in floor)}), {statistics.median(rps) * 100:.1f}% of "
            f"raw's throughput; outpost-serve vs tcp_floor {statistics.median(above):+.3f} ms "
            f"(pairs: {', '.join(f'{x:+.3f}' for x in above)}) | – |")


def saturation_row(sat, label):
    """Target row: median per-pair throughput ratio, served / raw, at least 97%."""
    ratios = [p["http"]["throughput_rps"] / p["raw"]["throughput_rps"] for p in sat["pairs"]]
    r = statistics.median(ratios)
    return (f"| {label} | serve "
            f"{statistics.median(p['http']['throughput_rps'] for p in sat['pairs']):.1f} req/s, raw "
            f"{statistics.median(p['raw']['throughput_rps'] for p in sat['pairs']):.1f} req/s; "
            f"median ratio {r * 100:.1f}% (pairs: {', '.join(f'{x * 100:.0f}%' for x in ratios)}) | "
            f"{'PASS' if r >= 0.97 else 'FAIL'} |")


def write_report(path, results, command):
    m = results["machine"]
    out = []
    out.append("# outpost-serve benchmark results\n")
    out.append(f"Produced by `{command}` on {results['date']} (total {results['total_s']:.0f} s).\n")
    out.append(f"- Machine: {m['cpu']}, {m['nproc']} cores (`nproc`), {m['mem']}, "
               f"Linux {m['kernel']}; shared with the load generator (same machine, loopback)")
    out.append(f"- ONNX Runtime {results.get('ort_version', '?')} (CPU), "
               f"source revision {results['git']}")
    out.append("- Raw = `bench/raw_ort`: one in-process session, same session options as "
               "outpost-serve (graph optimisation all, intra-op threads 0 = default, inter-op 1, "
               "CPU arena on), N threads calling `Run` on it in a closed loop")
    out.append("- HTTP = `bench/loadgen` against outpost-serve (default model config plus the "
               "session keys above spelled out): N keep-alive connections, closed loop; "
               "binary = KServe v2 binary tensor extension both ways, json = JSON `data` arrays")
    out.append("- Latency in ms (p50/p95/p99 of every request completed in the measured window); "
               "\"vs raw\" = HTTP figure / raw figure at the same concurrency; CPU = cores busy "
               "(process CPU seconds / wall seconds of the point, warm-up included; for raw rows the "
               "server column is raw_ort itself, model load included; other = every other process on "
               "the machine, from /proc/stat: the noise indicator)")
    out.append(f"- Load average before / after the run: {results['loadavg_start']} / "
               f"{results['loadavg_end']}; the suite ran at niceness {results['nice']}\n")

    # Targets.
    tm = results["models"].get(TARGET_MODEL)
    out.append("## Targets\n")
    out.append("| target | measured | result |")
    out.append("| --- | --- | --- |")
    if tm:
        rows = tm["rows"]
        paired = results.get("paired")
        if paired:
            n = paired["pairs"]
            out.append(c1_row(paired["c1"]["pairs"],
                              f"{TARGET_MODEL}, concurrency 1, binary: serve p50 <= raw p50 + 0.1 ms "
                              f"({n} alternating raw/HTTP pairs of {paired['slice_s']} s; median of "
                              f"the per-pair differences)"))
            tcp_pairs = [p for p in paired["c1"]["pairs"] if "tcp" in p]
            if tcp_pairs:
                out.append(tcp_floor_row(tcp_pairs))
        raw1 = next((r for r in rows if r["path"] == "raw" and r["concurrency"] == 1), None)
        bin1 = next((r for r in rows if r["path"] == "http binary" and r["concurrency"] == 1), None)
        if raw1 and bin1:
            d = bin1["p50_ms"] - raw1["p50_ms"]
            out.append(f"| (concurrency 1 from the sequential table below; informational) | "
                       f"serve {bin1['p50_ms']:.3f} ms, raw {raw1['p50_ms']:.3f} ms "
                       f"({d:+.3f} ms) | {'PASS' if d <= 0.1 else 'FAIL'} |")
        if paired:
            sat = paired["saturation"]
            out.append(saturation_row(
                sat, f"{TARGET_MODEL}, saturation, binary: serve throughput >= 97% of raw "
                f"(each at its fastest concurrency in the table: raw c={sat['raw_c']}, "
                f"HTTP c={sat['http_c']}; {n} alternating pairs)"))
        if paired and "saturation_instances" in paired:
            sat = paired["saturation_instances"]
            config = sat["label"].split(" ", 1)[1].replace(",", ", ").replace("=", ": ")
            out.append(saturation_row(
                sat, f"{TARGET_MODEL}, saturation, binary, the throughput configuration "
                f"(`{config}` in config.yaml) vs raw with the same session options "
                f"(`raw_ort --intra-op-threads 1`), each at its fastest concurrency in the table "
                f"(raw c={sat['raw_c']}, HTTP c={sat['http_c']}; {n} alternating pairs)"))
        if paired and "c1_shm" in paired:
            out.append(c1_row(paired["c1_shm"]["pairs"],
                              f"{TARGET_MODEL}, concurrency 1, shared memory input (system shared "
                              f"memory extension; {n} pairs)"))
            sat = paired["saturation_shm"]
            out.append(saturation_row(
                sat, f"{TARGET_MODEL}, saturation, shared memory input (raw c={sat['raw_c']}, "
                f"HTTP c={sat['http_c']}; {n} pairs)"))
        best_raw = max((r for r in rows if r["path"] == "raw"), key=lambda r: r["throughput_rps"])
        serve_rows = [r for r in rows if r["path"] == "http binary"]
        if serve_rows:
            best = max(serve_rows, key=lambda r: r["throughput_rps"])
            ratio = best["throughput_rps"] / best_raw["throughput_rps"]
            out.append(f"| (saturation from the sequential table; informational) | serve "
                       f"{best['throughput_rps']:.1f} req/s (c={best['concurrency']}), raw "
                       f"{best_raw['throughput_rps']:.1f} req/s (c={best_raw['concurrency']}): "
                       f"{ratio * 100:.1f}% | {'PASS' if ratio >= 0.97 else 'FAIL'} |")
        extra = [r for r in rows if r["path"].startswith("http instance_count")]
        if extra:
            best = max(extra, key=lambda r: r["throughput_rps"])
            ratio = best["throughput_rps"] / best_raw["throughput_rps"]
            out.append(f"| (same, with `{best['path'].split()[1].replace(',', ', ')}` in "
                       f"config.yaml, vs raw's best above; informational) | "
                       f"{best['throughput_rps']:.1f} req/s (c={best['concurrency']}): "
                       f"{ratio * 100:.1f}% | {'PASS' if ratio >= 0.97 else 'FAIL'} |")
            raw1 = [r for r in rows if r["path"] == "raw intra_op_threads=1"]
            if raw1:
                best1 = max(raw1, key=lambda r: r["throughput_rps"])
                ratio = best["throughput_rps"] / best1["throughput_rps"]
                out.append(f"| (same, vs raw with the same session options, "
                           f"`intra_op_threads: 1`, at its best c={best1['concurrency']}; "
                           f"informational) | {best['throughput_rps']:.1f} vs "
                           f"{best1['throughput_rps']:.1f} req/s: {ratio * 100:.1f}% | "
                           f"{'PASS' if ratio >= 0.97 else 'FAIL'} |")
        floor = results.get("floor")
        if floor:
            p50s = [r["p50_ms"] for r in floor["runs"]]
            srv = [r["server"]["request"] for r in floor["runs"] if "request" in r.get("server", {})]
            out.append(f"| (the floor: `{FLOOR_MODEL}`, the same {floor['request_bytes']} B "
                       f"request and 1000-float answer with no compute, c=1 binary; "
                       f"informational) | p50 {statistics.median(p50s):.3f} ms (runs: "
                       f"{', '.join(f'{x:.3f}' for x in p50s)})"
                       + (f"; mean inside the server {statistics.median(srv):.3f} ms" if srv else "")
                       + " | – |")
        if "bare_rss_kb" in results:
            ratio = tm["idle_rss_kb"] / results["bare_rss_kb"]
            out.append(f"| {TARGET_MODEL}: idle RSS of outpost-serve <= 1.5x bare load | serve "
                       f"{tm['idle_rss_kb'] / 1024:.1f} MiB, bare_load "
                       f"{results['bare_rss_kb'] / 1024:.1f} MiB: {ratio:.2f}x | "
                       f"{'PASS' if ratio <= 1.5 else 'FAIL'} |")
        if "startup_s" in results:
            med = statistics.median(results["startup_s"])
            runs = ", ".join(f"{t * 1000:.0f}" for t in results["startup_s"])
            out.append(f"| {TARGET_MODEL}: start-to-ready <= 1 s (median of 5) | "
                       f"{med * 1000:.0f} ms (runs: {runs} ms) | {'PASS' if med <= 1.0 else 'FAIL'} |")
        out.append("")
        if "bare_rss_warm_kb" in results:
            out.append(f"Memory detail: bare_load after one inference (the warm-up outpost-serve "
                       f"does at load) {results['bare_rss_warm_kb'] / 1024:.1f} MiB "
                       f"(serve/that = {tm['idle_rss_kb'] / results['bare_rss_warm_kb']:.2f}x); "
                       f"outpost-serve after the whole load run "
                       f"{tm['loaded_rss_kb'] / 1024:.1f} MiB.\n")

    for model, data in results["models"].items():
        rows = data["rows"]
        out.append(f"## {model}\n")
        out.append(f"{data['seconds']} s measured per point after {data['warmup']} s warm-up. "
                   f"outpost-serve idle RSS {data['idle_rss_kb'] / 1024:.1f} MiB, first "
                   f"start-to-ready {data['ready_s_first'] * 1000:.0f} ms.\n")
        out.extend(model_table(rows))
        srv = [r for r in rows if r.get("server")]
        if srv:
            out.append("\nInside the server (means from its /metrics histograms over the same "
                       "point, ms): where an HTTP or gRPC request's time goes.\n")
            out.extend(server_table(rows))
        out.append("")

    out.append("## Caveats\n")
    out.append("- Client and server share the same cores; the raw baseline has no client to share "
               "with. The client CPU column shows what loadgen takes from the server.")
    out.append("- The machine may be shared (the other CPU column): the sequential tables are one "
               "run per point, so compare rows only alongside that column. The two mobilenet_v2 "
               "speed targets are measured as alternating raw/HTTP pairs for that reason.")
    out.append("- outpost-serve runs the default `instance_count: 1`, so at concurrency > 1 its "
               "requests queue for one executor while raw_ort runs N `Run` calls concurrently on "
               "the shared session (ONNX Runtime's intra-op pool already spans every core). The "
               "`instance_count=N,intra_op_threads=1` rows run one single-threaded session per "
               "core instead, beside raw_ort with `--intra-op-threads 1`.")
    out.append("- Random weights and random inputs; figures are about the serving path, not "
               "model accuracy.")
    out.extend(owned_sections(path))
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def model_table(rows):
    """The per-point table of one model: raw, HTTP and gRPC rows."""
    out = []
    raw = {r["concurrency"]: r for r in rows if r["path"] == "raw"}
    out.append("| path | conc | p50 | p95 | p99 | req/s | p50 vs raw | p99 vs raw | "
               "req/s vs raw | errors | server CPU | client CPU | other CPU |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        base = raw.get(r["concurrency"])
        is_raw = r["path"].startswith("raw")
        p50r = None if is_raw or not base else r["p50_ms"] / base["p50_ms"]
        p99r = None if is_raw or not base else r["p99_ms"] / base["p99_ms"]
        tr = None if is_raw or not base or not base["throughput_rps"] else \
            r["throughput_rps"] / base["throughput_rps"]
        wall = r["wall_s"]
        if is_raw:
            scpu, ccpu = f"{r['cpu_s'] / wall:.2f}", "–"
            other = (r["busy_s"] - r["cpu_s"]) / wall
        else:
            scpu, ccpu = f"{r['server_cpu_s'] / wall:.2f}", f"{r['cpu_s'] / wall:.2f}"
            other = (r["busy_s"] - r["cpu_s"] - r["server_cpu_s"]) / wall
        out.append(f"| {r['path']} | {r['concurrency']} | {r['p50_ms']:.3f} | "
                   f"{r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {r['throughput_rps']:.1f} | "
                   f"{fmt_ratio(p50r)} | {fmt_ratio(p99r)} | {fmt_ratio(tr)} | {r['errors']} | "
                   f"{scpu} | {ccpu} | {max(other, 0):.2f} |")
    return out


def server_table(rows):
    """Where a served request's time goes, from the server's histograms."""
    raw = {r["concurrency"]: r for r in rows if r["path"] == "raw"}
    out = ["| path | conc | client mean | server request | queue | compute | "
           "raw mean (same conc) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if not r.get("server"):
            continue
        s = r["server"]
        base = raw.get(r["concurrency"])
        out.append(f"| {r['path']} | {r['concurrency']} | {fmt_ms(r['mean_ms'])} | "
                   f"{fmt_ms(s.get('request'))} | {fmt_ms(s.get('queue'))} | "
                   f"{fmt_ms(s.get('compute'))} | {fmt_ms(base['mean_ms'] if base else None)} |")
    return out


def write_section(path, name, results, command):
    """Replaces (or appends) the `<!-- begin: NAME -->` section of the report
    with raw / HTTP binary / gRPC tables, leaving everything else as it is."""
    m = results["machine"]
    out = [f"<!-- begin: {name} -->", "## outpost-serve over gRPC beside HTTP and raw ONNX Runtime\n",
           f"Produced by `{command}` with BENCH_SECTION={name} on {results['date']} "
           f"({m['cpu']}, {m['nproc']} cores, shared with the load generator; source revision "
           f"{results['git']}; load average {results['loadavg_start']} / "
           f"{results['loadavg_end']}). Raw = `bench/raw_ort`; http binary = `bench/loadgen` "
           f"(binary tensor extension both ways); grpc = `bench/grpc_loadgen` (one channel per "
           f"thread, input in raw_input_contents, outputs in raw_output_contents). Same server "
           f"process and model config for both protocols; ms.\n"]
    for model, data in results["models"].items():
        out.append(f"### {model}\n")
        out.append(f"{data['seconds']} s measured per point after {data['warmup']} s warm-up.\n")
        out.extend(model_table(data["rows"]))
        out.append("")
        out.extend(server_table(data["rows"]))
        out.append("")
    out.append(f"<!-- end: {name} -->")
    section = "\n".join(out)
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = ""
    pattern = re.compile(rf"<!-- begin: {re.escape(name)} -->.*?<!-- end: {re.escape(name)} -->",
                         re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def owned_sections(path):
    """Sections of RESULTS.md other bench scripts write (between their
    `<!-- begin: NAME -->` / `<!-- end: NAME -->` markers): kept as they are."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    lines = []
    for section in re.findall(r"<!-- begin: [\w.-]+ -->.*?<!-- end: [\w.-]+ -->", text, re.S):
        lines += ["", section]
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", required=True, help="build dir holding bench/ and src/serve/")
    p.add_argument("--models", required=True, help="model repository made by gen_models.py")
    p.add_argument("--out", required=True, help="markdown report to write")
    p.add_argument("--command", required=True, help="command line recorded in the report")
    args = p.parse_args()
    args.work = os.path.join(args.build, "bench-work")
    tools = {"raw_ort": os.path.join(args.build, "bench", "raw_ort"),
             "loadgen": os.path.join(args.build, "bench", "loadgen"),
             "grpc_loadgen": os.path.join(args.build, "bench", "grpc_loadgen"),
             "bare_load": os.path.join(args.build, "bench", "bare_load"),
             "tcp_floor": os.path.join(args.build, "bench", "tcp_floor"),
             "serve": os.path.join(args.build, "src", "serve", "outpost-serve")}
    for name, path in tools.items():
        if not os.access(path, os.X_OK):
            raise BenchError(f"{path} missing: build it (ninja -C {args.build} {os.path.basename(path)})")

    models = os.environ.get("BENCH_MODELS", "tiny mobilenet_v2 resnet50").split()
    concurrencies = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1 4 16").split()]
    warmup = float(os.environ.get("BENCH_WARMUP", "1"))
    t0 = time.monotonic()
    loadavg = lambda: " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = {"loadavg_start": loadavg(), "nice": os.nice(0), "machine": machine(), "models": {}, "git": git_rev(os.path.dirname(args.out))}
    for model in models:
        seconds = float(os.environ.get("BENCH_SECONDS", DEFAULT_SECONDS.get(model, 5)))
        seconds = int(seconds) if seconds == int(seconds) else seconds
        run_model(args, model, tools, seconds, warmup, concurrencies, results)
    results["date"] = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    results["total_s"] = time.monotonic() - t0
    results["loadavg_end"] = loadavg()
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if os.environ.get("BENCH_SECTION"):
        write_section(args.out, os.environ["BENCH_SECTION"], results, args.command)
    else:
        write_report(args.out, results, args.command)
    log(f"wrote {args.out} ({results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
