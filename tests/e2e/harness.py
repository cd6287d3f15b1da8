"""Shared harness for the outpost-serve end-to-end suites (Python stdlib only).

Environment:
  OUTPOST_SERVE_BIN    path to the outpost-serve binary
  OUTPOST_TEST_MODELS  the generated test-model repository (scripts/gen_models.py)

A Server copies the chosen models into a temporary model repository (with an
optional config.yaml per model), starts outpost-serve on a free port
(--http-port 0 --port-file), waits until it is ready, and on stop sends
SIGTERM and checks that it exits 0 within 10 s. Its stderr/stdout go to a log
file that is printed when a test fails.
"""

import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HOST = "127.0.0.1"

STRUCT_FORMATS = {
    "BOOL": "?", "UINT8": "B", "INT8": "b", "UINT16": "H", "INT16": "h",
    "UINT32": "I", "INT32": "i", "UINT64": "Q", "INT64": "q",
    "FP16": "e", "FP32": "f", "FP64": "d",
}


def _env_path(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set: run through ctest (ctest -L e2e) or export it")
    return value


def serve_binary():
    return _env_path("OUTPOST_SERVE_BIN")


def test_models_dir():
    return _env_path("OUTPOST_TEST_MODELS")


def model_source(name, version):
    return os.path.join(test_models_dir(), name, str(version), "model.onnx")


def flatten(data):
    if isinstance(data, (list, tuple)):
        out = []
        for item in data:
            out.extend(flatten(item))
        return out
    return [data]


def pack(datatype, values):
    values = flatten(values)
    return struct.pack("<%d%s" % (len(values), STRUCT_FORMATS[datatype]), *values)


def unpack(datatype, raw):
    size = struct.calcsize(STRUCT_FORMATS[datatype])
    if len(raw) % size:
        raise AssertionError(f"{len(raw)} bytes is not a whole number of {datatype}")
    return list(struct.unpack("<%d%s" % (len(raw) // size, STRUCT_FORMATS[datatype]), raw))


class Response:
    """An HTTP response: status, headers (lower-case names), raw body."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError(f"HTTP {self.status}: body is not JSON ({e}): {self.body[:500]!r}")

    def __repr__(self):
        return f"HTTP {self.status} {self.body[:600]!r}"


def parse_infer_body(headers, body):
    """Parses an inference response; binary outputs get their `data` decoded."""
    header_len = headers.get("inference-header-content-length")
    if header_len is None:
        return json.loads(body)
    n = int(header_len)
    if n > len(body):
        raise AssertionError(f"Inference-Header-Content-Length {n} > body length {len(body)}")
    doc = json.loads(body[:n])
    offset = n
    for out in doc.get("outputs", []):
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            continue
        if "data" in out:
            raise AssertionError(f"output {out.get('name')} has both data and binary_data_size")
        raw = body[offset:offset + size]
        if len(raw) != size:
            raise AssertionError(f"output {out.get('name')}: binary_data_size {size} but only "
                                 f"{len(raw)} bytes left in the body")
        out["data"] = unpack(out["datatype"], raw)
        out["_binary"] = True
        offset += size
    if offset != len(body):
        raise AssertionError(f"{len(body) - offset} unexplained bytes after the binary outputs")
    return doc


def read_http_response(sock, timeout=10.0):
    """Reads one HTTP/1.1 response (Content-Length framed) from a raw socket.

    Returns a Response, or None when the peer closed before sending anything.
    Raises socket.timeout when nothing complete arrives within `timeout`.
    """
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\r\n\r\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no complete response headers")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            if not buf:
                return None
            raise AssertionError(f"connection closed inside the response headers: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("incomplete response body")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed inside the response body")
        rest += chunk
    return Response(status, headers, rest[:length])


def parse_metrics(text):
    """Prometheus text -> (samples, types): samples is a list of (name, labels dict, value)."""
    samples, types = [], {}
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)", line)
        if not m:
            raise AssertionError(f"unparseable metrics line: {line!r}")
        labels = dict(label_re.findall(m.group(3) or ""))
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples, types


def find_samples(samples, name, **labels):
    return [(l, v) for n, l, v in samples
            if n == name and all(l.get(k) == str(want) for k, want in labels.items())]


class Server:
    """One outpost-serve process on a temporary model repository.

    models: {name: [versions]} or [names] (all versions the test-models dir has).
    configs: {name: config.yaml text}.
    """

    def __init__(self, models=(), configs=None, flags=(), wait="ready"):
        self.tmp = tempfile.mkdtemp(prefix="outpost-e2e-")
        self.repo = os.path.join(self.tmp, "models")
        os.makedirs(self.repo)
        if not isinstance(models, dict):
            models = {m: None for m in models}
        for name, versions in models.items():
            self.add_model(name, versions)
        for name, text in (configs or {}).items():
            self.write_config(name, text)
        self.flags = list(flags)
        self.wait = wait
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.tmp, "server.log")
        self._log = None

    # Repository manipulation -------------------------------------------------
    def add_model(self, name, versions=None):
        src = os.path.join(test_models_dir(), name)
        if versions is None:
            versions = sorted(int(v) for v in os.listdir(src) if v.isdigit())
        os.makedirs(os.path.join(self.repo, name), exist_ok=True)
        for v in versions:
            self.add_version(name, v, name, v)

    def add_version(self, name, version, src_model=None, src_version=None):
        """Copies <test-models>/src_model/src_version into <repo>/name/version atomically."""
        staging = tempfile.mkdtemp(dir=self.tmp, prefix="staging-")
        shutil.copyfile(model_source(src_model or name, src_version or version),
                        os.path.join(staging, "model.onnx"))
        os.makedirs(os.path.join(self.repo, name), exist_ok=True)
        os.rename(staging, os.path.join(self.repo, name, str(version)))

    def remove_version(self, name, version):
        path = os.path.join(self.repo, name, str(version))
        graveyard = tempfile.mkdtemp(dir=self.tmp, prefix="removed-")
        os.rename(path, os.path.join(graveyard, "v"))
        shutil.rmtree(graveyard)

    def write_config(self, name, text):
        os.makedirs(os.path.join(self.repo, name), exist_ok=True)
        with open(os.path.join(self.repo, name, "config.yaml"), "w") as f:
            f.write(text)

    # Process ------------------------------------------------------------------
    def start(self):
        port_file = os.path.join(self.tmp, "port.json")
        cmd = [serve_binary(), "--model-repository", self.repo, "--http-port", "0",
               "--port-file", port_file] + self.flags
        self._log = open(self.log_path, "wb")
        self._log.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while self.port is None:
                self._check_alive("before writing the port file")
                if time.monotonic() > deadline:
                    raise AssertionError(f"no port file after {START_TIMEOUT_S} s")
                try:
                    with open(port_file) as f:
                        self.port = int(json.load(f)["http"])
                except (OSError, ValueError, KeyError):
                    time.sleep(0.05)
            path = "/v2/health/ready" if self.wait == "ready" else "/v2/health/live"
            while True:
                self._check_alive("before becoming ready")
                try:
                    if self.get(path, timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{path} not 200 after {START_TIMEOUT_S} s")
                time.sleep(0.05)
        except BaseException:
            self.kill()
            self.print_log()
            raise
        return self

    def _check_alive(self, when):
        rc = self.proc.poll()
        if rc is not None:
            raise AssertionError(f"outpost-serve exited with {rc} {when}")

    def stop(self):
        """SIGTERM; asserts a clean exit (code 0) within STOP_TIMEOUT_S."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            if proc.poll() is not None:
                raise AssertionError(f"outpost-serve had already exited with {proc.returncode}")
            proc.send_signal(signal.SIGTERM)
            start = time.monotonic()
            try:
                rc = proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"outpost-serve did not exit within {STOP_TIMEOUT_S} s of SIGTERM")
            if rc != 0:
                raise AssertionError(f"outpost-serve exited with {rc} after SIGTERM "
                                     f"({time.monotonic() - start:.1f} s)")
        finally:
            self._log.close()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self._log:
            self._log.close()

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_text(self, offset=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def print_log(self, offset=0, limit=20000):
        text = self.log_text(offset)
        if len(text) > limit:
            text = "...\n" + text[-limit:]
        sys.stderr.write(f"\n----- outpost-serve log ({self.log_path}) -----\n{text}"
                         f"\n----- end of log -----\n")

    def pid(self):
        return self.proc.pid

    def rss_bytes(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/<pid>/status")

    # HTTP -------------------------------------------------------------------
    def connection(self, timeout=30):
        return http.client.HTTPConnection(HOST, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None, timeout=30):
        """One request; on a new connection unless `conn` is given (kept open then)."""
        own = conn is None
        if own:
            conn = self.connection(timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = dict(headers or {})
                headers.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            if own:
                conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    @staticmethod
    def model_path(model, version=None, suffix=""):
        path = f"/v2/models/{model}"
        if version is not None:
            path += f"/versions/{version}"
        return path + suffix

    def infer_json(self, model, inputs, outputs=None, version=None, request_id=None,
                   parameters=None, conn=None):
        """inputs: [(name, datatype, shape, data)]; outputs: [names] or [dicts]."""
        doc = {"inputs": [{"name": n, "datatype": d, "shape": s, "data": v}
                          for n, d, s, v in inputs]}
        if request_id is not None:
            doc["id"] = request_id
        if outputs is not None:
            doc["outputs"] = [o if isinstance(o, dict) else {"name": o} for o in outputs]
        if parameters:
            doc["parameters"] = parameters
        resp = self.post(self.model_path(model, version, "/infer"), doc, conn=conn)
        resp.doc = parse_infer_body(resp.headers, resp.body) if resp.status == 200 else None
        return resp

    def infer_binary(self, model, inputs, outputs=None, version=None, binary_output=True,
                     conn=None):
        """Binary tensor data extension. inputs: [(name, datatype, shape, data)], each sent raw.

        binary_output=True asks for all outputs raw (request-level parameter);
        `outputs` may instead give per-output dicts.
        """
        raws = [pack(d, v) for _, d, _, v in inputs]
        doc = {"inputs": [{"name": n, "datatype": d, "shape": s,
                           "parameters": {"binary_data_size": len(raw)}}
                          for (n, d, s, _), raw in zip(inputs, raws)]}
        if outputs is not None:
            doc["outputs"] = [o if isinstance(o, dict) else {"name": o} for o in outputs]
        if binary_output:
            doc["parameters"] = {"binary_data_output": True}
        header = json.dumps(doc).encode()
        body = header + b"".join(raws)
        resp = self.post(self.model_path(model, version, "/infer"), body,
                         headers={"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}, conn=conn)
        resp.doc = parse_infer_body(resp.headers, resp.body) if resp.status == 200 else None
        return resp

    def index(self):
        resp = self.post("/v2/repository/index", {})
        if resp.status != 200:
            raise AssertionError(f"repository index: {resp}")
        return resp.json()

    def index_entries(self, model):
        return [e for e in self.index() if e.get("name") == model]

    def load(self, model, timeout=60):
        return self.post(f"/v2/repository/models/{model}/load", {}, timeout=timeout)

    def unload(self, model, timeout=60):
        return self.post(f"/v2/repository/models/{model}/unload", {}, timeout=timeout)

    def metrics(self):
        resp = self.get("/metrics")
        if resp.status != 200:
            raise AssertionError(f"/metrics: {resp}")
        return resp.body.decode()

    def wait_until(self, predicate, timeout, what, interval=0.1):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except (OSError, AssertionError) as e:
                last = e
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")

    # Raw sockets ---------------------------------------------------------------
    def raw_socket(self, timeout=10):
        sock = socket.create_connection((HOST, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def raw_request(self, data, timeout=10):
        """Sends raw bytes on a new connection and reads one response (None if closed)."""
        with self.raw_socket(timeout) as sock:
            sock.sendall(data)
            return read_http_response(sock, timeout)


def wait_closed_or_response(sock, timeout):
    """Waits until the peer closes or answers. Returns ("closed", None) or ("response", Response)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            peek = sock.recv(1, socket.MSG_PEEK)
        except (ConnectionResetError, BrokenPipeError):
            return "closed", None
        if not peek:
            return "closed", None
        return "response", read_http_response(sock, max(0.1, deadline - time.monotonic()))
    return "open", None


class ServerTestCase(unittest.TestCase):
    """Base class: start_server() per test, or a class-level server via CLASS_SERVER kwargs.

    When a test fails, the server's log is printed.
    """

    CLASS_SERVER = None  # dict of Server kwargs for a server shared by the class
    server = None

    @classmethod
    def setUpClass(cls):
        if cls.CLASS_SERVER is not None:
            server = Server(**cls.CLASS_SERVER)
            try:
                cls.server = server.start()
            except BaseException:
                server.cleanup()
                raise

    @classmethod
    def tearDownClass(cls):
        if cls.CLASS_SERVER is not None and cls.server is not None:
            server, cls.server = cls.server, None
            try:
                server.stop()
            except BaseException:
                server.print_log()
                raise
            finally:
                server.cleanup()

    def setUp(self):
        if self.server is not None:
            self.addCleanup(self._print_log_if_failed, self.server)

    def _failed(self):
        # Inside a cleanup the outcome's success flag is reset, so ask the result.
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return False
        return any(test is self for test, _ in list(result.failures) + list(result.errors))

    def _print_log_if_failed(self, server):
        if self._failed():
            server.print_log()

    def start_server(self, **kw):
        server = Server(**kw)
        self.addCleanup(server.cleanup)
        server.start()
        self.addCleanup(self._stop_server, server)
        return server

    def _stop_server(self, server):
        try:
            server.stop()
        except BaseException:
            server.print_log()
            raise
        if self._failed():
            server.print_log()

    # Assertions ------------------------------------------------------------------
    def assertStatus(self, resp, status, msg=""):
        if isinstance(status, int):
            status = (status,)
        self.assertIn(resp.status, status, f"{msg} {resp!r}")

    def assertErrorJson(self, resp, status, *needles):
        """A JSON {"error": "..."} with the status; the message names each needle group.

        A needle is a string or a tuple of alternatives (case-insensitive).
        """
        self.assertStatus(resp, status)
        doc = resp.json()
        self.assertIsInstance(doc, dict, f"error body is not an object: {resp!r}")
        self.assertIn("error", doc, f"no 'error' key: {resp!r}")
        message = doc["error"]
        self.assertIsInstance(message, str)
        self.assertTrue(message.strip(), f"empty error message: {resp!r}")
        for needle in needles:
            alternatives = needle if isinstance(needle, tuple) else (needle,)
            self.assertTrue(any(a.lower() in message.lower() for a in alternatives),
                            f"error message {message!r} should mention one of {alternatives}")
        return message

    def assertClose(self, got, want, msg="", tol=1e-5):
        got, want = flatten(got), flatten(want)
        self.assertEqual(len(got), len(want), f"{msg}: {got} vs {want}")
        for g, w in zip(got, want):
            self.assertTrue(abs(g - w) <= tol * max(1.0, abs(w)), f"{msg}: {got} != {want}")

    def output(self, resp, name):
        self.assertStatus(resp, 200)
        for out in resp.doc["outputs"]:
            if out["name"] == name:
                return out
        self.fail(f"no output {name!r} in {resp.doc}")


def main():
    unittest.main(verbosity=2)
