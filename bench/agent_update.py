#!/usr/bin/env python3
"""Times a healthy update of a ~100 MB bundle by the real outpost-agent,
download excluded: verify + unpack + switch (and, in between, what the
agent must do before it may switch: start outpost-serve on the new slot,
wait for ready, run the manifest's self-test).

For each run: a fresh state directory gets r1 (add_one) installed by
`outpost-agent run` (soak 0, poll 0.05 s); the big bundle is dropped into
its bundle folder; the agent copies it into downloads/ (the "download",
not timed) and records `verifying` in state.json; the clock runs from that
state to `committed`. state.json is polled every 2 ms, so each step's time
is the time between the first sightings of consecutive states (+-2 ms).

Bundles (Python stdlib + the `outpost` CLI; nothing downloaded):
  data      add_one (y = x + 2) plus a 100 MB incompressible data file
  resnet50  BUILD/bench-models/resnet50 (98 MB of random weights, loaded by
            the runtime before it is ready) plus add_one; only when
            `scripts/bench.sh` has generated it

  bench/agent_update.py --build build [--runs 5] [--write-results]

--write-results replaces the "agent update" section of bench/RESULTS.md
(between its markers; bench/bench.py keeps it when it rewrites the file).
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

STEPS = ["verifying", "unpacking", "starting", "health_check", "soaking", "committing",
         "committed"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- begin: agent_update -->", "<!-- end: agent_update -->"


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    return p.stdout


def selftest(path, plus):
    with open(path, "w") as f:
        json.dump([{"name": "plus", "model": "add_one",
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                "data": [1, 2, 3, 4]}],
                    "expected_outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 4],
                                          "data": [1 + plus, 2 + plus, 3 + plus, 4 + plus]}]}], f)


def build_bundle(b, work, name, release, sequence, add_one_version, extra_model=None,
                 data_bytes=0):
    src = os.path.join(work, "src-" + name)
    models = os.path.join(src, "models")
    os.makedirs(os.path.join(models, "add_one", "1"))
    shutil.copy(os.path.join(b["models"], "add_one", str(add_one_version), "model.onnx"),
                os.path.join(models, "add_one", "1", "model.onnx"))
    if extra_model:
        dest = os.path.join(models, os.path.basename(os.path.dirname(os.path.dirname(extra_model))),
                            "1")
        os.makedirs(dest)
        shutil.copy(extra_model, os.path.join(dest, "model.onnx"))
    cmd = [b["cli"], "bundle", "build", "--models", models, "--name", release,
           "--sequence", str(sequence), "--sign-key", b["key"]]
    st = os.path.join(src, "selftest.json")
    selftest(st, add_one_version)
    cmd += ["--self-test", st]
    if data_bytes:
        data = os.path.join(src, "weights.bin")
        with open(data, "wb") as f:
            left = data_bytes
            while left:
                n = min(left, 8 << 20)
                f.write(os.urandom(n))
                left -= n
        cmd += ["--config", data]
    out = os.path.join(work, name + ".tar.zst")
    cmd += ["--out", out, "--level", "1"]
    run(cmd)
    return out


def read_state(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def one_run(b, work, v1, big, i):
    dev = os.path.join(work, f"run-{i}")
    state = os.path.join(dev, "state")
    bundles = os.path.join(dev, "bundles")
    os.makedirs(bundles)
    shutil.copy(v1, os.path.join(bundles, "v1.tar.zst"))
    log = open(os.path.join(dev, "agent.log"), "wb")
    agent = subprocess.Popen(
        [b["agent"], "run", "--state-dir", state, "--trust-dir", b["trust"], "--bundle-dir",
         bundles, "--serve-binary", b["serve"], "--soak", "0", "--poll-interval", "0.05"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        state_json = os.path.join(state, "state.json")
        deadline = time.monotonic() + 60
        while True:
            s = read_state(state_json)
            if s and s["state"] == "committed":
                break
            if time.monotonic() > deadline or agent.poll() is not None:
                sys.exit(f"r1 was not committed: {s}")
            time.sleep(0.05)
        # Same filesystem as the bundle folder: the drop is a rename.
        tmp = os.path.join(bundles, "big.tar.zst.tmp")
        shutil.copy(big, tmp)
        os.rename(tmp, os.path.join(bundles, "big.tar.zst"))
        seen = {}
        deadline = time.monotonic() + 300
        while "committed" not in seen or "verifying" not in seen:
            s = read_state(state_json)
            now = time.monotonic()
            # verifying: the big bundle is complete in downloads/ (r1's states
            # are committed ones, and the release is known from unpacking on).
            if s and (s["state"] == "verifying" or s["update"].get("release") == "big"):
                seen.setdefault(s["state"], now)
            if s and s["state"] == "rolled_back":
                sys.exit(f"the big bundle was rolled back: {s['update']}")
            if now > deadline or agent.poll() is not None:
                sys.exit(f"no commit of the big bundle: {s}")
            time.sleep(0.002)
        # When a state lasted less than a poll, its start is the next one's.
        reached = {}
        for k, step in enumerate(STEPS):
            reached[step] = min(seen[x] for x in STEPS[k:] if x in seen)
        times = {step: reached[STEPS[k + 1]] - reached[step] for k, step in enumerate(STEPS[:-1])}
        times["total"] = reached["committed"] - reached["verifying"]
        return times
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        log.close()
        shutil.rmtree(dev, ignore_errors=True)


def measure(b, work, v1, big, runs):
    results = []
    for i in range(runs):
        t = one_run(b, work, v1, big, i)
        results.append(t)
        print(f"  run {i + 1}: total {t['total']:.3f} s  (" +
              ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items() if k != "total") + ")",
              flush=True)
    med = {k: statistics.median(r.get(k, 0.0) for r in results) for k in results[0]}
    return med, [r["total"] for r in results]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="CMake build directory")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mb", type=int, default=100, help="data file size of the data bundle")
    ap.add_argument("--bench-models",
                    help="where resnet50/1/model.onnx is (default: BUILD/bench-models, then "
                         "build/bench-models; scripts/bench.sh generates it)")
    ap.add_argument("--write-results", action="store_true",
                    help="write the figures into bench/RESULTS.md")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    b = {"agent": os.path.join(build, "src/agent/outpost-agent"),
         "serve": os.path.join(build, "src/serve/outpost-serve"),
         "cli": os.path.join(build, "src/cli/outpost"),
         "models": os.path.join(build, "test-models")}
    for k in ("agent", "serve", "cli"):
        if not os.access(b[k], os.X_OK):
            sys.exit(f"{b[k]} is missing: build first (cmake --build {args.build})")
    work = tempfile.mkdtemp(prefix="outpost-agent-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    try:
        keys = os.path.join(work, "keys")
        run([b["cli"], "keys", "generate", "--out", keys, "--name", "bench"])
        b["key"] = os.path.join(keys, "bench.key")
        b["trust"] = os.path.join(work, "trust")
        os.makedirs(b["trust"])
        shutil.copy(os.path.join(keys, "bench.pub"), b["trust"])
        v1 = build_bundle(b, work, "v1", "r1", 1, 1)
        variants = [("data", build_bundle(b, work, "data", "big", 2, 2,
                                          data_bytes=args.size_mb << 20))]
        resnet = None
        for d in (args.bench_models, os.path.join(build, "bench-models"),
                  os.path.join(ROOT, "build", "bench-models")):
            if d and os.path.exists(os.path.join(d, "resnet50", "1", "model.onnx")):
                resnet = os.path.join(d, "resnet50", "1", "model.onnx")
                break
        if resnet:
            variants.append(("resnet50", build_bundle(b, work, "resnet50", "big", 2, 2,
                                                      extra_model=resnet)))
        rows = []
        load_before = os.getloadavg()
        for name, big in variants:
            size = os.path.getsize(big)
            print(f"{name}: bundle {size / 1e6:.1f} MB", flush=True)
            med, totals = measure(b, work, v1, big, args.runs)
            rows.append((name, size, med, totals))
        report = render(rows, args, load_before, os.getloadavg())
        print()
        print(report)
        if args.write_results:
            write_results(report)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fs_type(path):
    p = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return p.stdout.strip() or "?"


def render(rows, args, load_before, load_after):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tmp = os.environ.get("TMPDIR", "/var/tmp")
    out = [BEGIN, "## outpost-agent: update of a 100 MB bundle (download excluded)", "",
           f"Produced by `python3 bench/agent_update.py --build {args.build} --runs {args.runs}"
           f"{' --write-results' if args.write_results else ''}` on {now}; {os.cpu_count()} cores, "
           f"state directory on {fs_type(tmp)} ({tmp}). Median of {args.runs} runs, each on a "
           "fresh device with r1 committed: the clock runs from `verifying` (bundle complete in "
           "downloads/) to `committed` in state.json, with `--soak 0`. The gate between unpack "
           "and switch (start outpost-serve on the new slot, ready, self-test) is included; "
           "the soak, a configured wait, is not. Load average before / after: "
           f"{' '.join(f'{x:.2f}' for x in load_before)} / "
           f"{' '.join(f'{x:.2f}' for x in load_after)} (the machine is shared).", "",
           "| bundle | size | verify | unpack (write + fsync) | start + ready + self-test | "
           "switch + commit | total | target < 3 s | runs (total, s) |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for name, size, med, totals in rows:
        gate = med.get("starting", 0) + med.get("health_check", 0) + med.get("soaking", 0)
        what = ("add_one + 100 MiB random data file" if name == "data" else
                "resnet50 (random weights) + add_one")
        out.append(
            f"| {what} | {size / 1e6:.1f} MB | {med.get('verifying', 0) * 1000:.0f} ms | "
            f"{med.get('unpacking', 0) * 1000:.0f} ms | {gate * 1000:.0f} ms | "
            f"{med.get('committing', 0) * 1000:.0f} ms | {med['total']:.2f} s | "
            f"{'PASS' if med['total'] < 3 else 'FAIL'} | "
            f"{', '.join(f'{t:.2f}' for t in totals)} |")
    out += ["", "verify = `verifying` -> `unpacking` (signature, manifest, target; the head "
            "of the bundle only); unpack = `unpacking` -> `starting` (wipe the slot, stream, "
            "hash, write and fsync every file); start + ready + self-test = `starting` -> "
            "`committing`; switch + commit = `committing` -> `committed` (atomic symlink "
            "rename, state.json).", END]
    return "\n".join(out)


def write_results(report):
    path = os.path.join(ROOT, "bench", "RESULTS.md")
    with open(path) as f:
        text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + report + tail
    else:
        text = text.rstrip("\n") + "\n\n" + report + "\n"
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
