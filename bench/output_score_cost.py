#!/usr/bin/env python3
"""What output-score histograms (docs/serve.md "Output scores") cost on the
request path: outpost-serve with scoring on (the default) and off
(`output_score: off`) on the same model, alternating runs, loadgen closed
loop at concurrency 1 (binary tensors). Prints one markdown table row per
pair and the medians.

usage: bench/output_score_cost.py --build BUILD --model-dir DIR/mobilenet_v2
                                  [--pairs 5] [--seconds 10]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request


def serve(build, repo, port_file):
    if os.path.exists(port_file):
        os.unlink(port_file)
    proc = subprocess.Popen([os.path.join(build, "src/serve/outpost-serve"), "--model-repository",
                             repo, "--http-port", "0", "--port-file", port_file],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if os.path.exists(port_file):
            with open(port_file) as f:
                text = f.read()
            if text.strip():
                port = json.loads(text)["http"]
                try:  # listening is not ready: wait for the model to load
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                                timeout=2) as r:
                        if r.status == 200:
                            return proc, port
                except OSError:
                    pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("outpost-serve did not start")


def run_point(build, repo, model, seconds, tmp):
    proc, port = serve(build, repo, os.path.join(tmp, "port.json"))
    try:
        out = subprocess.run([os.path.join(build, "bench/loadgen"), "--port", str(port), "--model",
                              model, "--mode", "binary", "--concurrency", "1", "--duration",
                              str(seconds), "--warmup", "1"],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    finally:
        proc.terminate()
        proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", required=True)
    p.add_argument("--model-dir", required=True, help="<repo>/<model> holding 1/model.onnx")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10)
    args = p.parse_args()
    model = os.path.basename(os.path.normpath(args.model_dir))
    with tempfile.TemporaryDirectory(prefix="outpost-score-cost-") as tmp:
        repos = {}
        for variant, config in (("on", ""), ("off", "output_score: off\n")):
            repo = os.path.join(tmp, variant)
            os.makedirs(os.path.join(repo, model, "1"))
            shutil.copy(os.path.join(args.model_dir, "1", "model.onnx"),
                        os.path.join(repo, model, "1", "model.onnx"))
            with open(os.path.join(repo, model, "config.yaml"), "w") as f:
                f.write(config)
            repos[variant] = repo
        p50 = {"on": [], "off": []}
        print("| pair | p50 off (ms) | p50 on (ms) | on - off (ms) |")
        print("| ---: | ---: | ---: | ---: |")
        for i in range(args.pairs):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            result = {v: run_point(args.build, repos[v], model, args.seconds, tmp) for v in order}
            for v in ("on", "off"):
                p50[v].append(result[v]["p50_ms"])
            print(f"| {i + 1} | {result['off']['p50_ms']:.3f} | {result['on']['p50_ms']:.3f} | "
                  f"{result['on']['p50_ms'] - result['off']['p50_ms']:+.3f} |", flush=True)
        diffs = [a - b for a, b in zip(p50["on"], p50["off"])]
        print(f"\nmedian p50 off {statistics.median(p50['off']):.3f} ms, on "
              f"{statistics.median(p50['on']):.3f} ms, median paired difference "
              f"{statistics.median(diffs):+.3f} ms")


if __name__ == "__main__":
    main()
