#!/usr/bin/python3
"""KServe v2 API of outpost-serve: health, metadata, JSON and binary inference, keep-alive."""

import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

X = [[0.5, -1.0, 2.25, 100.0]]


class ApiTest(harness.ServerTestCase):
    # add_one serves both versions (1: x+1, 2: x+2) so that /versions/N can be addressed.
    CLASS_SERVER = dict(models=["add_one", "two_io", "fixed", "tiny"],
                        configs={"add_one": "version_policy: all\n"})

    def test_live_and_ready(self):
        for path in ("/v2/health/live", "/v2/health/ready"):
            resp = self.server.get(path)
            self.assertStatus(resp, 200, path)
            self.assertEqual(resp.body, b"", path)

    def test_server_metadata(self):
        resp = self.server.get("/v2")
        self.assertStatus(resp, 200)
        doc = resp.json()
        self.assertEqual(doc["name"], "outpost-serve")
        self.assertIsInstance(doc["version"], str)
        self.assertTrue(doc["version"])
        self.assertIsInstance(doc["extensions"], list)
        for ext in doc["extensions"]:
            self.assertIsInstance(ext, str)

    def test_model_metadata(self):
        resp = self.server.get("/v2/models/add_one")
        self.assertStatus(resp, 200)
        doc = resp.json()
        self.assertEqual(doc["name"], "add_one")
        self.assertEqual(doc["platform"], "onnxruntime_onnx")
        self.assertEqual(sorted(doc["versions"]), ["1", "2"], "versions are strings (KServe v2)")
        self.assertEqual(doc["inputs"], [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}])
        self.assertEqual(doc["outputs"], [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}])
        self.assertEqual(doc["execution_provider"], "cpu")
        self.assertEqual(doc["provider_fallbacks"], [])

    def test_model_metadata_two_io_and_fixed(self):
        doc = self.server.get("/v2/models/two_io").json()
        self.assertEqual({(i["name"], i["datatype"], tuple(i["shape"])) for i in doc["inputs"]},
                         {("a", "FP32", (-1, 3)), ("b", "INT64", (-1, 3))})
        self.assertEqual({(o["name"], o["datatype"], tuple(o["shape"])) for o in doc["outputs"]},
                         {("twice_a", "FP32", (-1, 3)), ("b_plus_one", "INT64", (-1, 3))})
        doc = self.server.get("/v2/models/fixed").json()
        self.assertEqual(doc["inputs"], [{"name": "x", "datatype": "FP32", "shape": [2, 2]}])

    def test_model_metadata_by_version(self):
        resp = self.server.get("/v2/models/add_one/versions/1")
        self.assertStatus(resp, 200)
        self.assertEqual(resp.json()["name"], "add_one")

    def test_model_ready_by_version(self):
        self.assertStatus(self.server.get("/v2/models/add_one/ready"), 200)
        self.assertStatus(self.server.get("/v2/models/add_one/versions/1/ready"), 200)
        self.assertStatus(self.server.get("/v2/models/add_one/versions/2/ready"), 200)
        self.assertStatus(self.server.get("/v2/models/add_one/versions/9/ready"), (404, 503))
        self.assertStatus(self.server.get("/v2/models/nope/ready"), (404, 503))

    def test_infer_newest_version(self):
        resp = self.server.infer_json("add_one", [("x", "FP32", [1, 4], X)], request_id="42")
        self.assertStatus(resp, 200)
        doc = resp.doc
        self.assertEqual(doc["id"], "42")
        self.assertEqual(doc["model_name"], "add_one")
        self.assertEqual(doc["model_version"], "2")
        y = self.output(resp, "y")
        self.assertEqual(y["datatype"], "FP32")
        self.assertEqual(y["shape"], [1, 4])
        self.assertClose(y["data"], [v + 2 for v in X[0]], "newest version adds 2")

    def test_infer_specific_version(self):
        resp = self.server.infer_json("add_one", [("x", "FP32", [1, 4], X)], version=1)
        self.assertEqual(resp.doc["model_version"], "1")
        self.assertClose(self.output(resp, "y")["data"], [v + 1 for v in X[0]], "v1 adds 1")
        resp = self.server.infer_json("add_one", [("x", "FP32", [1, 4], X)], version=2)
        self.assertEqual(resp.doc["model_version"], "2")
        self.assertClose(self.output(resp, "y")["data"], [v + 2 for v in X[0]], "v2 adds 2")

    def test_infer_flat_and_nested_data(self):
        rows = [[1, 2, 3, 4], [5, 6, 7, 8]]
        want = [v + 2 for v in harness.flatten(rows)]
        nested = self.server.infer_json("add_one", [("x", "FP32", [2, 4], rows)])
        flat = self.server.infer_json("add_one", [("x", "FP32", [2, 4], harness.flatten(rows))])
        for resp in (nested, flat):
            y = self.output(resp, "y")
            self.assertEqual(y["shape"], [2, 4])
            self.assertClose(y["data"], want)

    def test_infer_batch_of_four(self):
        rows = [[i * 4 + j for j in range(4)] for i in range(4)]
        y = self.output(self.server.infer_json("add_one", [("x", "FP32", [4, 4], rows)]), "y")
        self.assertEqual(y["shape"], [4, 4])
        self.assertClose(y["data"], [v + 2 for v in harness.flatten(rows)])

    def test_two_io_int64_and_output_selection(self):
        a = [[1.5, -2.0, 0.0]]
        b = [[2**40 + 1, -7, 0]]  # beyond 2^32 and negative: INT64 must survive JSON
        inputs = [("b", "INT64", [1, 3], b), ("a", "FP32", [1, 3], a)]  # any order
        resp = self.server.infer_json("two_io", inputs)
        self.assertEqual({o["name"] for o in resp.doc["outputs"]}, {"twice_a", "b_plus_one"})
        self.assertClose(self.output(resp, "twice_a")["data"], [3.0, -4.0, 0.0])
        bp = self.output(resp, "b_plus_one")
        self.assertEqual(bp["datatype"], "INT64")
        self.assertEqual(bp["data"], [2**40 + 2, -6, 1])

        resp = self.server.infer_json("two_io", inputs, outputs=["b_plus_one"])
        self.assertEqual([o["name"] for o in resp.doc["outputs"]], ["b_plus_one"])
        self.assertEqual(resp.doc["outputs"][0]["data"], [2**40 + 2, -6, 1])

    def test_binary_in_binary_out(self):
        rows = [[0.25, 1.0, -3.5, 7.0], [8.0, 9.5, 10.0, -0.75]]
        resp = self.server.infer_binary("add_one", [("x", "FP32", [2, 4], rows)])
        self.assertStatus(resp, 200)
        self.assertIn("inference-header-content-length", resp.headers)
        y = self.output(resp, "y")
        self.assertTrue(y.get("_binary"), f"output not binary: {y}")
        self.assertEqual(y["parameters"]["binary_data_size"], 8 * 4)
        self.assertEqual(y["shape"], [2, 4])
        self.assertClose(y["data"], [v + 2 for v in harness.flatten(rows)])

    def test_binary_two_io_int64(self):
        a, b = [[1.0, 2.0, 3.0]], [[-(2**50), 5, 2**62]]
        resp = self.server.infer_binary("two_io", [("a", "FP32", [1, 3], a), ("b", "INT64", [1, 3], b)])
        self.assertEqual(self.output(resp, "b_plus_one")["data"], [-(2**50) + 1, 6, 2**62 + 1])
        self.assertClose(self.output(resp, "twice_a")["data"], [2.0, 4.0, 6.0])

    def test_binary_in_json_out(self):
        resp = self.server.infer_binary("add_one", [("x", "FP32", [1, 4], X)], binary_output=False)
        self.assertStatus(resp, 200)
        y = self.output(resp, "y")
        self.assertFalse(y.get("_binary"))
        self.assertClose(y["data"], [v + 2 for v in X[0]])

    def test_json_in_binary_out_per_output(self):
        inputs = [("a", "FP32", [1, 3], [[1.0, 2.0, 3.0]]), ("b", "INT64", [1, 3], [[1, 2, 3]])]
        resp = self.server.infer_json(
            "two_io", inputs,
            outputs=[{"name": "twice_a", "parameters": {"binary_data": True}},
                     {"name": "b_plus_one", "parameters": {"binary_data": False}}])
        self.assertStatus(resp, 200)
        self.assertIn("inference-header-content-length", resp.headers)
        twice = self.output(resp, "twice_a")
        self.assertTrue(twice.get("_binary"), f"twice_a should be binary: {twice}")
        self.assertClose(twice["data"], [2.0, 4.0, 6.0])
        bp = self.output(resp, "b_plus_one")
        self.assertFalse(bp.get("_binary"), f"b_plus_one should be JSON: {bp}")
        self.assertEqual(bp["data"], [2, 3, 4])

    def test_json_in_binary_out_request_level(self):
        resp = self.server.infer_json("add_one", [("x", "FP32", [1, 4], X)],
                                      parameters={"binary_data_output": True})
        y = self.output(resp, "y")
        self.assertTrue(y.get("_binary"))
        self.assertClose(y["data"], [v + 2 for v in X[0]])

    def test_fixed_model_without_batch_dimension(self):
        x = [[1.0, 2.0], [-3.0, 0.5]]
        resp = self.server.infer_json("fixed", [("x", "FP32", [2, 2], x)])
        y = self.output(resp, "y")
        self.assertEqual(y["shape"], [2, 2])
        self.assertClose(y["data"], [3.0, 6.0, -9.0, 1.5])
        self.assertEqual(resp.doc["model_version"], "1")

    def test_tiny_model(self):
        resp = self.server.infer_binary("tiny", [("input", "FP32", [3, 64], [0.01 * i for i in range(192)])])
        out = self.output(resp, "output")
        self.assertEqual(out["shape"], [3, 10])
        self.assertEqual(len(out["data"]), 30)

    def test_keep_alive_100_requests(self):
        conn = self.server.connection()
        try:
            sock = None
            for i in range(100):
                resp = self.server.infer_json("add_one", [("x", "FP32", [1, 4], [[i, i, i, i]])],
                                              conn=conn)
                self.assertStatus(resp, 200, f"request {i}")
                self.assertNotEqual(resp.headers.get("connection", "").lower(), "close",
                                    f"server closed the keep-alive connection at request {i}")
                self.assertClose(self.output(resp, "y")["data"], [i + 2] * 4)
                if sock is None:
                    sock = conn.sock
                self.assertIsNotNone(conn.sock, f"connection dropped after request {i}")
                self.assertIs(conn.sock, sock, f"reconnected at request {i}")
        finally:
            conn.close()


class ConnectionLimitsTest(harness.ServerTestCase):
    def test_idle_keep_alive_connection_is_closed(self):
        server = self.start_server(models={"add_one": [1]}, flags=["--http-idle-timeout-ms", "300"])
        with server.raw_socket() as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
            resp = harness.read_http_response(sock, timeout=5)
            self.assertStatus(resp, 200)
            start = time.monotonic()
            outcome, _ = harness.wait_closed_or_response(sock, 5)
            elapsed = time.monotonic() - start
        self.assertEqual(outcome, "closed", "idle keep-alive connection still open after 5 s")
        self.assertGreater(elapsed, 0.2, "closed before the idle timeout")
        self.assertLess(elapsed, 2.5, f"idle connection closed only after {elapsed:.2f} s")


class CommandLineTest(harness.ServerTestCase):
    """Exit codes: 2 for bad flags, 1 when the server cannot start (docs/serve.md)."""

    def run_serve(self, *flags):
        result = subprocess.run([harness.serve_binary()] + list(flags), capture_output=True, timeout=15)
        return result.returncode, (result.stdout + result.stderr).decode(errors="replace")

    def test_help(self):
        rc, out = self.run_serve("--help")
        self.assertEqual(rc, 0, out)
        for flag in ("--model-repository", "--http-port", "--model-control-mode", "--port-file",
                     "--http-max-body-bytes", "--http-request-timeout-ms", "--strict-readiness"):
            self.assertIn(flag, out)

    def test_bad_flags(self):
        with tempfile.TemporaryDirectory() as repo:
            rc, out = self.run_serve("--model-repository", repo, "--no-such-flag")
            self.assertEqual(rc, 2, out)
            rc, out = self.run_serve("--model-repository", repo, "--model-control-mode", "sometimes")
            self.assertEqual(rc, 2, out)
            rc, out = self.run_serve("--http-port", "0")  # --model-repository is required
            self.assertEqual(rc, 2, out)

    def test_missing_repository(self):
        rc, out = self.run_serve("--model-repository", "/nonexistent/outpost-models", "--http-port", "0")
        self.assertEqual(rc, 1, out)
        self.assertIn("/nonexistent/outpost-models", out)

    def test_port_in_use(self):
        with socket.socket() as taken, tempfile.TemporaryDirectory() as repo:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            rc, out = self.run_serve("--model-repository", repo, "--http-port", str(port))
            self.assertEqual(rc, 1, out)
            self.assertIn(str(port), out)

    def test_non_loopback_address_needs_tls(self):
        with tempfile.TemporaryDirectory() as repo:
            rc, out = self.run_serve("--model-repository", repo, "--http-port", "0",
                                     "--http-address", "0.0.0.0")
            self.assertIn(rc, (1, 2), out)
            self.assertIn("--allow-insecure-http", out)


if __name__ == "__main__":
    harness.main()
