#!/usr/bin/python3
"""Execution providers: a missing CUDA falls back to CPU visibly; strict_providers refuses instead.

This machine has no GPU and the CPU-only ONNX Runtime, so CUDA always fails here.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class ProvidersTest(harness.ServerTestCase):
    CLASS_SERVER = dict(
        models=["add_one", "two_io", "fixed"],
        configs={"add_one": "execution_providers: [cuda, cpu]\n",
                 "two_io": "execution_providers: [cuda, cpu]\nstrict_providers: true\n"},
        flags=["--strict-readiness", "false"], wait="live")

    def setUp(self):
        super().setUp()
        self.server.wait_until(lambda: self.server.get("/v2/models/add_one/ready").status == 200,
                               30, "add_one ready")

    def test_fallback_to_cpu_is_visible(self):
        doc = self.server.get("/v2/models/add_one").json()
        self.assertEqual(doc["execution_provider"], "cpu")
        fallbacks = doc["provider_fallbacks"]
        cuda = [f for f in fallbacks if f.get("provider") == "cuda"]
        self.assertEqual(len(cuda), 1, f"provider_fallbacks {fallbacks}")
        self.assertIsInstance(cuda[0].get("reason"), str)
        self.assertTrue(cuda[0]["reason"].strip(), f"fallback without a reason: {fallbacks}")
        resp = self.server.infer_json("add_one", [("x", "FP32", [1, 4], [[1, 2, 3, 4]])])
        self.assertClose(self.output(resp, "y")["data"], [3, 4, 5, 6])

    def test_fallback_metric(self):
        samples, _ = harness.parse_metrics(self.server.metrics())
        found = harness.find_samples(samples, "outpost_execution_provider_fallbacks_total",
                                     model="add_one", provider="cuda")
        self.assertTrue(found, "no outpost_execution_provider_fallbacks_total{model=add_one,provider=cuda}")
        self.assertGreaterEqual(sum(v for _, v in found), 1)
        loaded = harness.find_samples(samples, "outpost_model_loaded", model="add_one", provider="cpu")
        self.assertTrue(loaded and all(v == 1 for _, v in loaded), f"outpost_model_loaded: {loaded}")

    def test_model_without_config_has_no_fallbacks(self):
        doc = self.server.get("/v2/models/fixed").json()
        self.assertEqual(doc["execution_provider"], "cpu")
        self.assertEqual(doc["provider_fallbacks"], [])

    def test_strict_providers_refuses_to_fall_back(self):
        def settled():
            entries = self.server.index_entries("two_io")
            return entries if entries and all(e["state"] not in ("LOADING", "") for e in entries) else None

        entries = self.server.wait_until(settled, 20, "two_io to settle in the index")
        self.assertTrue(all(e["state"] == "UNAVAILABLE" for e in entries), f"two_io: {entries}")
        reason = " ".join(e.get("reason", "") for e in entries)
        self.assertIn("cuda", reason.lower(), f"reason should name the provider: {entries}")
        self.assertStatus(self.server.get("/v2/models/two_io/ready"), (404, 503))
        resp = self.server.infer_json("two_io", [("a", "FP32", [1, 3], [[1, 2, 3]]),
                                                 ("b", "INT64", [1, 3], [[1, 2, 3]])])
        self.assertErrorJson(resp, (404, 503))
        # The others still serve.
        resp = self.server.infer_json("fixed", [("x", "FP32", [2, 2], [[1, 2], [3, 4]])])
        self.assertClose(self.output(resp, "y")["data"], [3, 6, 9, 12])


if __name__ == "__main__":
    harness.main()
