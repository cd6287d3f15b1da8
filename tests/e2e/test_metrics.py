#!/usr/bin/python3
"""GET /metrics: valid Prometheus text (promtool), every documented metric, counters that move."""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

PROMTOOL = "/usr/bin/promtool"
INFERENCES = 5

# docs/serve.md, "Metrics": name -> type; all labelled by model and version unless noted.
PER_VERSION = {
    "outpost_inference_requests_total": "counter",
    "outpost_inference_request_duration_seconds": "histogram",
    "outpost_inference_queue_duration_seconds": "histogram",
    "outpost_inference_compute_duration_seconds": "histogram",
    "outpost_inference_latency_seconds": "summary",
    "outpost_inference_batch_size": "histogram",
    "outpost_inferences_per_second": "gauge",
    "outpost_inference_queue_depth": "gauge",
    "outpost_inference_queue_rejections_total": "counter",
    "outpost_last_inference_timestamp_seconds": "gauge",
    "outpost_model_loaded": "gauge",
    "outpost_model_load_duration_seconds": "gauge",
}
PROCESS = {
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_start_time_seconds": "gauge",
}
LV = {"model": "add_one", "version": "2"}


def sample_name(name, kind):
    return name + "_count" if kind in ("histogram", "summary") else name


class MetricsTest(harness.ServerTestCase):
    CLASS_SERVER = dict(models=["add_one", "two_io"],
                        configs={"two_io": "max_batch_size: -3\n"},  # one load failure
                        flags=["--strict-readiness", "false"])

    def setUp(self):
        super().setUp()
        self.server.wait_until(lambda: self.server.get("/v2/models/add_one/ready").status == 200,
                               20, "add_one ready")

    def scrape(self):
        resp = self.server.get("/metrics")
        self.assertStatus(resp, 200)
        self.assertTrue(resp.headers.get("content-type", "").startswith("text/plain"),
                        f"content-type {resp.headers.get('content-type')}")
        return resp.body.decode()

    def infer(self, n=INFERENCES):
        for i in range(n):
            resp = self.server.infer_json("add_one", [("x", "FP32", [1, 4], [[i, 0, 0, 0]])])
            self.assertStatus(resp, 200)

    def value(self, samples, name, **labels):
        found = harness.find_samples(samples, name, **labels)
        self.assertEqual(len(found), 1, f"{name}{labels}: expected one sample, got {found}")
        return found[0][1]

    def test_promtool_accepts_the_text(self):
        self.infer()
        text = self.scrape()
        result = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                                capture_output=True, timeout=30)
        output = (result.stdout + result.stderr).decode()
        if output.strip():
            print(f"\npromtool check metrics (exit {result.returncode}):\n{output}", flush=True)
        self.assertEqual(result.returncode, 0, f"promtool check metrics failed:\n{output}")

    def test_documented_metrics_present_with_labels(self):
        self.infer()
        samples, types = harness.parse_metrics(self.scrape())
        for name, kind in PER_VERSION.items():
            self.assertEqual(types.get(name), kind, f"# TYPE of {name}")
            found = harness.find_samples(samples, sample_name(name, kind), **LV)
            self.assertTrue(found, f"{name} has no sample labelled {LV}")
        for name, kind in PROCESS.items():
            self.assertEqual(types.get(name), kind, f"# TYPE of {name}")
            self.assertTrue(harness.find_samples(samples, name), f"{name} missing")
        self.assertEqual(types.get("outpost_model_load_failures_total"), "counter")
        for q in ("0.5", "0.95", "0.99"):
            self.value(samples, "outpost_inference_latency_seconds", quantile=q, **LV)

    def test_counters_move(self):
        before, _ = harness.parse_metrics(self.scrape())
        self.infer()
        after, _ = harness.parse_metrics(self.scrape())

        def moved(name, **labels):
            return self.value(after, name, **labels) - (
                (harness.find_samples(before, name, **labels) or [({}, 0.0)])[0][1])

        self.assertEqual(moved("outpost_inference_requests_total", status="success", **LV), INFERENCES)
        for hist in ("outpost_inference_request_duration_seconds", "outpost_inference_queue_duration_seconds",
                     "outpost_inference_compute_duration_seconds", "outpost_inference_latency_seconds"):
            self.assertEqual(moved(hist + "_count", **LV), INFERENCES, hist)
            self.assertGreater(moved(hist + "_sum", **LV), 0, hist)
        self.assertGreaterEqual(moved("outpost_inference_batch_size_count", **LV), 1)
        # The rate is recomputed periodically (about once a second): give it a moment.
        self.server.wait_until(
            lambda: self.value(harness.parse_metrics(self.scrape())[0], "outpost_inferences_per_second", **LV) > 0,
            5, "outpost_inferences_per_second > 0 after inferences")
        self.assertEqual(self.value(after, "outpost_inference_queue_depth", **LV), 0)
        last = self.value(after, "outpost_last_inference_timestamp_seconds", **LV)
        self.assertLess(abs(time.time() - last), 60, f"last inference timestamp {last}")
        self.assertGreaterEqual(
            self.value(after, "outpost_inference_request_duration_seconds_bucket", le="+Inf", **LV),
            INFERENCES)

    def test_model_state_metrics(self):
        samples, _ = harness.parse_metrics(self.scrape())
        self.assertEqual(self.value(samples, "outpost_model_loaded", provider="cpu", **LV), 1)
        self.assertGreater(self.value(samples, "outpost_model_load_duration_seconds", **LV), 0)
        self.assertGreaterEqual(self.value(samples, "outpost_model_load_failures_total", model="two_io"), 1)
        for labels, value in harness.find_samples(samples, "outpost_model_loaded", model="two_io"):
            self.assertEqual(value, 0, f"two_io failed to load but is reported loaded: {labels}")
        self.assertGreater(self.value(samples, "process_resident_memory_bytes"), 1e6)
        start = self.value(samples, "process_start_time_seconds")
        self.assertLess(abs(time.time() - start), 600, f"process_start_time_seconds {start}")

    def test_rejected_request_is_not_a_success(self):
        def successes(samples):
            found = harness.find_samples(samples, "outpost_inference_requests_total", status="success", **LV)
            return found[0][1] if found else 0.0

        before, _ = harness.parse_metrics(self.scrape())
        # Too many rows for the default max_batch_size of 8.
        resp = self.server.infer_json("add_one", [("x", "FP32", [9, 4], [[0, 0, 0, 0]] * 9)])
        self.assertStatus(resp, 400)
        after, _ = harness.parse_metrics(self.scrape())
        self.assertEqual(successes(after), successes(before))

if __name__ == "__main__":
    harness.main()
