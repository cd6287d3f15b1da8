#!/usr/bin/python3
"""The benchmark tools (bench/) do what bench.py relies on: loadgen really sends
inference requests in every mode and counts them, raw_ort and tcp_floor run the
model, and bad arguments are refused with their documented exit codes. A
broken tool would otherwise show up only as wrong figures in RESULTS.md."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

REQUESTS = 50


def tool(name):
    directory = os.environ.get("OUTPOST_BENCH_DIR")
    if not directory:
        raise AssertionError("OUTPOST_BENCH_DIR is not set (ctest sets it)")
    return os.path.join(directory, name)


def run(args, expect_rc=0):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != expect_rc:
        raise AssertionError(f"{' '.join(args)}: exit {proc.returncode}, expected {expect_rc}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def summary(args):
    """Runs a tool that prints one JSON summary line and returns it parsed."""
    line = run(args).stdout.strip().splitlines()[-1]
    return json.loads(line)


class BenchToolsTest(harness.ServerTestCase):
    CLASS_SERVER = {"models": ["tiny"]}

    def successes(self):
        samples, _ = harness.parse_metrics(self.server.metrics())
        return sum(value for _, value in harness.find_samples(
            samples, "outpost_inference_requests_total", model="tiny", status="success"))

    def check_summary(self, result, mode):
        self.assertEqual(result["requests"], REQUESTS, result)
        self.assertEqual(result["errors"], 0, result)
        self.assertEqual(result["mode"], mode, result)
        self.assertGreater(result["p50_ms"], 0, result)
        self.assertLessEqual(result["p50_ms"], result["p99_ms"], result)
        self.assertGreater(result["throughput_rps"], 0, result)

    def test_loadgen_sends_real_inferences_in_every_mode(self):
        for mode in ("binary", "json", "shm"):
            with self.subTest(mode=mode):
                before = self.successes()
                result = summary([tool("loadgen"), "--port", str(self.server.port),
                                  "--model", "tiny", "--mode", mode, "--warmup", "0",
                                  "--requests", str(REQUESTS)])
                self.check_summary(result, mode)
                # Every counted request was an inference the server answered
                # (the metadata request and the first, checked request too).
                self.assertGreaterEqual(self.successes() - before, REQUESTS)

    def test_loadgen_refuses_an_unknown_model_and_bad_flags(self):
        proc = run([tool("loadgen"), "--port", str(self.server.port), "--model", "nope",
                    "--requests", "1"], expect_rc=1)
        self.assertIn("nope", proc.stderr + proc.stdout)
        run([tool("loadgen"), "--port", str(self.server.port), "--model", "tiny",
             "--mode", "carrier-pigeon"], expect_rc=2)

    def test_raw_ort_runs_the_model(self):
        result = summary([tool("raw_ort"), "--model", harness.model_source("tiny", 1),
                          "--warmup", "0", "--requests", str(REQUESTS)])
        self.check_summary(result, "raw")

    def test_tcp_floor_moves_the_bytes_and_runs_the_model(self):
        result = summary([tool("tcp_floor"), "--request-bytes", "65536", "--warmup", "0",
                          "--requests", str(REQUESTS)])
        self.check_summary(result, "tcp_floor")
        self.assertEqual(result["request_bytes"], 65536)
        result = summary([tool("tcp_floor"), "--model", harness.model_source("tiny", 1),
                          "--warmup", "0", "--requests", str(REQUESTS)])
        self.check_summary(result, "tcp_floor_model")
        # A request too small to hold the input tensor is a flag error.
        run([tool("tcp_floor"), "--model", harness.model_source("tiny", 1),
             "--request-bytes", "1"], expect_rc=2)
        run([tool("tcp_floor"), "--model", "/nonexistent/model.onnx"], expect_rc=1)


if __name__ == "__main__":
    harness.main()
