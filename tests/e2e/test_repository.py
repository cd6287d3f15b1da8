#!/usr/bin/python3
"""Model repository: explicit load/unload, poll mode, and broken models that must not sink the rest."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

X = [[1.0, 2.0, 3.0, 4.0]]


def add_one_input():
    return [("x", "FP32", [1, 4], X)]


class ExplicitModeTest(harness.ServerTestCase):
    def start(self):
        return self.start_server(models=["add_one", "two_io", "tiny"],
                                 flags=["--model-control-mode", "explicit", "--load-model", "add_one"])

    def state(self, server, model):
        entries = server.index_entries(model)
        self.assertTrue(entries, f"{model} missing from the repository index {server.index()}")
        return entries

    def test_index_lists_loaded_and_unloaded_models(self):
        server = self.start()
        index = server.index()
        self.assertIsInstance(index, list)
        for entry in index:
            self.assertEqual(set(entry) >= {"name", "state"}, True, f"index entry {entry}")
            self.assertIn(entry["state"], ("READY", "UNAVAILABLE", "LOADING", "UNLOADING", ""),
                          f"index entry {entry}")
        ready = [e for e in self.state(server, "add_one") if e["state"] == "READY"]
        self.assertEqual([str(e.get("version")) for e in ready], ["2"], f"index {index}")
        for model in ("two_io", "tiny"):
            for e in self.state(server, model):
                self.assertNotEqual(e["state"], "READY", f"{model} was not asked for: {index}")
        self.assertStatus(server.infer_json("two_io", [("a", "FP32", [1, 3], [[1, 2, 3]]),
                                                       ("b", "INT64", [1, 3], [[1, 2, 3]])]),
                          (404, 503), "two_io is not loaded")

    def test_load_then_unload(self):
        server = self.start()
        resp = server.load("two_io")
        self.assertStatus(resp, 200, "load two_io")
        self.assertStatus(server.get("/v2/models/two_io/ready"), 200)
        resp = server.infer_json("two_io", [("a", "FP32", [1, 3], [[1, 2, 3]]),
                                            ("b", "INT64", [1, 3], [[1, 2, 3]])])
        self.assertEqual(self.output(resp, "b_plus_one")["data"], [2, 3, 4])
        self.assertIn("READY", [e["state"] for e in self.state(server, "two_io")])

        resp = server.unload("add_one")
        self.assertStatus(resp, 200, "unload add_one")
        resp = server.infer_json("add_one", add_one_input())
        self.assertErrorJson(resp, (404, 503))
        self.assertStatus(server.get("/v2/models/add_one/ready"), (404, 503))
        server.wait_until(
            lambda: all(e["state"] == "UNAVAILABLE" for e in self.state(server, "add_one")),
            10, "add_one UNAVAILABLE in the index")
        # The other model is untouched.
        self.assertStatus(server.infer_json("two_io", [("a", "FP32", [1, 3], [[1, 2, 3]]),
                                                       ("b", "INT64", [1, 3], [[1, 2, 3]])]), 200)

        # And it can come back.
        self.assertStatus(server.load("add_one"), 200, "reload add_one")
        resp = server.infer_json("add_one", add_one_input())
        self.assertEqual(resp.doc["model_version"], "2")

    def test_load_unknown_model(self):
        server = self.start()
        resp = server.load("does_not_exist")
        self.assertErrorJson(resp, (400, 404), "does_not_exist")
        self.assertStatus(server.infer_json("add_one", add_one_input()), 200)


class PollModeTest(harness.ServerTestCase):
    def test_new_and_removed_versions_are_picked_up(self):
        server = self.start_server(models={"add_one": [1]},
                                   flags=["--model-control-mode", "poll", "--repository-poll-secs", "1"])
        resp = server.infer_json("add_one", add_one_input())
        self.assertEqual(resp.doc["model_version"], "1")
        self.assertClose(self.output(resp, "y")["data"], [2, 3, 4, 5])

        server.add_version("add_one", 2)

        def serves(version, delta):
            resp = server.infer_json("add_one", add_one_input())
            if resp.status != 200:
                raise AssertionError(f"inference failed during the swap: {resp}")
            if resp.doc["model_version"] != version:
                return False
            self.assertClose(self.output(resp, "y")["data"], [v + delta for v in X[0]])
            return True

        server.wait_until(lambda: serves("2", 2), 8, "version 2 to serve after it was copied in")

        server.remove_version("add_one", 2)
        server.wait_until(lambda: serves("1", 1), 8, "version 1 to serve again after 2 was removed")

    def test_new_model_is_loaded(self):
        server = self.start_server(models={"add_one": [1]},
                                   flags=["--model-control-mode", "poll", "--repository-poll-secs", "1"])
        server.add_version("fixed", 1)
        server.wait_until(lambda: server.get("/v2/models/fixed/ready").status == 200, 8,
                          "a new model folder to be loaded")
        resp = server.infer_json("fixed", [("x", "FP32", [2, 2], [[1, 1], [1, 1]])])
        self.assertClose(self.output(resp, "y")["data"], [3, 3, 3, 3])


class BrokenModelsTest(harness.ServerTestCase):
    """Bad models are UNAVAILABLE with a reason; the good one serves."""

    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server(
            models=["add_one", "two_io", "tiny", "fixed"],
            configs={"two_io": "max_batch_size: -3\n",
                     "tiny": "max_batch_size: 4\nmax_batchsize_typo: 4\n"},
            flags=["--strict-readiness", "false"], wait="live")
        with open(os.path.join(cls.server.repo, "fixed", "1", "model.onnx"), "wb") as f:
            f.write(b"this is not an ONNX model\x00\x01\x02" * 10)
        cls.server.start()
        cls.server.wait_until(lambda: cls.server.get("/v2/models/add_one/ready").status == 200,
                              30, "add_one ready")

    @classmethod
    def tearDownClass(cls):
        server, cls.server = cls.server, None
        try:
            server.stop()
        except BaseException:
            server.print_log()
            raise
        finally:
            server.cleanup()

    def unavailable_reason(self, model):
        def settled():
            entries = self.server.index_entries(model)
            return entries if entries and all(e["state"] not in ("LOADING", "") for e in entries) else None
        entries = self.server.wait_until(settled, 20, f"{model} to settle in the index")
        for e in entries:
            self.assertEqual(e["state"], "UNAVAILABLE", f"{model}: {entries}")
        reason = " ".join(e.get("reason", "") for e in entries)
        self.assertTrue(reason.strip(), f"{model}: UNAVAILABLE without a reason: {entries}")
        self.assertStatus(self.server.get(f"/v2/models/{model}/ready"), (404, 503))
        return reason

    def assertGoodModelServes(self):
        resp = self.server.infer_json("add_one", add_one_input())
        self.assertStatus(resp, 200)
        self.assertClose(self.output(resp, "y")["data"], [3, 4, 5, 6])

    def test_negative_max_batch_size(self):
        reason = self.unavailable_reason("two_io")
        self.assertIn("config.yaml", reason)
        self.assertIn("max_batch_size", reason)
        resp = self.server.infer_json("two_io", [("a", "FP32", [1, 3], [[1, 2, 3]]),
                                                 ("b", "INT64", [1, 3], [[1, 2, 3]])])
        self.assertErrorJson(resp, (404, 503))
        self.assertGoodModelServes()

    def test_unknown_config_key(self):
        reason = self.unavailable_reason("tiny")
        self.assertIn("config.yaml", reason)
        self.assertIn("max_batchsize_typo", reason)
        self.assertGoodModelServes()

    def test_garbage_onnx_file(self):
        reason = self.unavailable_reason("fixed")
        self.assertIn("model.onnx", reason)
        resp = self.server.infer_json("fixed", [("x", "FP32", [2, 2], [[1, 1], [1, 1]])])
        self.assertErrorJson(resp, (404, 503))
        self.assertGoodModelServes()

    def test_load_failures_counted(self):
        samples, _ = harness.parse_metrics(self.server.metrics())
        for model in ("two_io", "tiny", "fixed"):
            found = harness.find_samples(samples, "outpost_model_load_failures_total", model=model)
            self.assertTrue(found and found[0][1] >= 1,
                            f"outpost_model_load_failures_total{{model={model}}}: {found}")


class ReadinessTest(harness.ServerTestCase):
    """--strict-readiness: ready only when every model that should be loaded is loaded."""

    def start(self, strict):
        server = self.start_server(models=["add_one", "two_io"], configs={"two_io": "max_batch_size: -3\n"},
                                   flags=["--strict-readiness", strict], wait="live")
        server.wait_until(lambda: server.get("/v2/models/add_one/ready").status == 200, 20, "add_one ready")
        server.wait_until(lambda: [e for e in server.index_entries("two_io") if e["state"] == "UNAVAILABLE"],
                          20, "two_io UNAVAILABLE")
        return server

    def test_strict_readiness_with_a_broken_model(self):
        server = self.start("true")
        self.assertStatus(server.get("/v2/health/ready"), 503)
        self.assertStatus(server.get("/v2/health/live"), 200)

    def test_relaxed_readiness_with_a_broken_model(self):
        server = self.start("false")
        self.assertStatus(server.get("/v2/health/ready"), 200)


if __name__ == "__main__":
    harness.main()
