"""Harness for the fleet end-to-end suites: a real outpost-hub (SQLite or
PostgreSQL), real devices (each an outpost-agent supervising its own
outpost-serve, with its own state directory), signed bundles built with the
real `outpost` CLI. Python stdlib only; everything on loopback.

Environment (set by ctest): OUTPOST_HUB_BIN, OUTPOST_AGENT_BIN,
OUTPOST_SERVE_BIN, OUTPOST_CLI_BIN, OUTPOST_TEST_MODELS.
"""

import http.client
import json
import os
import shutil
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
INPUT = [1.0, 2.0, 3.0, 4.0]


def env_path(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set: run through ctest (ctest -L e2e) or export it")
    return value


class Bins:
    def __init__(self):
        self.hub = env_path("OUTPOST_HUB_BIN")
        self.agent = env_path("OUTPOST_AGENT_BIN")
        self.serve = env_path("OUTPOST_SERVE_BIN")
        self.cli = env_path("OUTPOST_CLI_BIN")
        self.models = env_path("OUTPOST_TEST_MODELS")


def run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


class NotServing(Exception):
    """A device's runtime answered, but not with a result (e.g. 503 while loading)."""


def wait_for(predicate, timeout, what, interval=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (OSError, http.client.HTTPException, ValueError, NotServing) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Releases:
    """Keys and signed bundles of the add_one model family."""

    def __init__(self, bins, root):
        self.bins = bins
        self.dir = os.path.join(root, "releases")
        os.makedirs(self.dir)
        self.keys = os.path.join(self.dir, "keys")
        run([bins.cli, "keys", "generate", "--out", self.keys, "--name", "release"])
        self.public_key = os.path.join(self.keys, "release.pub")
        self.paths = {}

    def build(self, release, sequence, model="add_one", version=1, expect=1.0, baseline=None,
              extra_models=(), configs=()):
        """`extra_models`: test models packed whole beside add_one;
        `configs`: files packed as config/<name> (e.g. *.pipeline.yaml)."""
        src = os.path.join(self.dir, "src-" + release)
        model_dir = os.path.join(src, "models", "add_one", "1")
        os.makedirs(model_dir)
        shutil.copy(os.path.join(self.bins.models, model, str(version), "model.onnx"), model_dir)
        for extra in extra_models:
            shutil.copytree(os.path.join(self.bins.models, extra),
                            os.path.join(src, "models", extra))
        selftest = os.path.join(src, "selftest.json")
        with open(selftest, "w") as f:
            json.dump([{"name": "adds", "model": "add_one",
                        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                    "data": INPUT}],
                        "expected_outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 4],
                                              "data": [v + expect for v in INPUT]}]}], f)
        out = os.path.join(self.dir, release + ".tar.zst")
        run([self.bins.cli, "bundle", "build", "--models", os.path.join(src, "models"),
             "--self-test", selftest, "--name", release, "--sequence", str(sequence),
             "--out", out, "--sign-key", os.path.join(self.keys, "release.key")]
            + (["--baseline", baseline] if baseline else [])
            + [arg for config in configs for arg in ("--config", config)])
        self.paths[release] = out
        return out


class Hub:
    """One outpost-hub process; restartable on the same data directory."""

    def __init__(self, bins, root, name="hub", db_url="", data_dir=None):
        self.bins = bins
        self.dir = os.path.join(root, name)
        self.data = data_dir or os.path.join(self.dir, "data")
        os.makedirs(self.dir, exist_ok=True)
        self.db_url = db_url
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.dir, "hub.log")
        self.token = None
        self.extra_args = []  # more `serve` flags

    def db_args(self):
        return ["--db", self.db_url] if self.db_url else []

    def create_admin_token(self):
        self.token = run([self.bins.hub, "admin", "create-token", "--data", self.data,
                          "--name", "e2e", "--role", "admin"] + self.db_args()).strip()
        return self.token

    def trust(self, public_key):
        run([self.bins.hub, "admin", "trust-key", "--data", self.data, public_key])

    def start(self, port=0):
        port_file = os.path.join(self.dir, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.bins.hub, "serve", "--data", self.data, "--port", str(port),
             "--port-file", port_file, "--rollout-tick", "0.2", "--long-poll-recheck", "0.5",
             "--device-poll-interval", "5"] + self.db_args() + self.extra_args,
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        def port():
            if not os.path.exists(port_file):
                return None
            with open(port_file) as f:
                return f.read().strip()
        self.port = int(wait_for(port, 30, "hub port"))
        self.ca = os.path.join(self.data, "tls", "ca.pem")
        self.url = f"https://127.0.0.1:{self.port}"
        wait_for(lambda: self.api("GET", "/api/v1/health")[0] == 200, 10, "hub health")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise AssertionError("hub did not stop within 15 s of SIGTERM")
            if code != 0:
                raise AssertionError(f"hub exited {code} on SIGTERM")

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def api(self, method, path, body=None, token=None, raw=None, timeout=30):
        ctx = ssl.create_default_context(cafile=self.ca)
        conn = http.client.HTTPSConnection(HOST, self.port, context=ctx, timeout=timeout)
        headers = {"Authorization": f"Bearer {token or self.token}"}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        try:
            return response.status, json.loads(payload) if payload else None
        except ValueError:
            return response.status, payload.decode(errors="replace")

    def push(self, bundle_path):
        with open(bundle_path, "rb") as f:
            status, body = self.api("POST", "/api/v1/admin/releases", raw=f.read())
        assert status == 201, (status, body)
        return body

    def bootstrap_file(self, path, device_id, site="e2e"):
        status, body = self.api("POST", "/api/v1/admin/bootstrap-tokens",
                                {"uses": 1, "ttl_s": 3600, "site": site, "device_id": device_id})
        assert status == 201, (status, body)
        with open(path, "w") as f:
            json.dump(body["bootstrap"], f)
        os.chmod(path, 0o600)

    def rollout(self, release, waves, soak=1, deadline=120, **extra):
        body = {"release": release, "waves": waves, "soak_s": soak, "deadline_s": deadline}
        body.update(extra)
        status, answer = self.api("POST", "/api/v1/admin/rollouts", body)
        assert status == 201, (status, answer)
        return answer["id"]

    def rollout_state(self, rollout_id):
        status, body = self.api("GET", f"/api/v1/admin/rollouts/{rollout_id}")
        assert status == 200, (status, body)
        return body

    def device(self, device_id):
        status, body = self.api("GET", f"/api/v1/admin/devices/{device_id}")
        assert status == 200, (status, body)
        return body

    def events(self, device_id):
        status, body = self.api("GET", f"/api/v1/admin/devices/{device_id}/events")
        assert status == 200, (status, body)
        return body["events"]


class Device:
    """An outpost-agent (which supervises its own outpost-serve)."""

    def __init__(self, bins, root, device_id, hub):
        self.bins = bins
        self.id = device_id
        self.dir = os.path.join(root, device_id)
        self.state = os.path.join(self.dir, "state")
        self.trust = os.path.join(self.dir, "trust")
        os.makedirs(self.trust, exist_ok=True)
        self.bootstrap = os.path.join(self.dir, "bootstrap.json")
        self.log_path = os.path.join(self.dir, "agent.log")
        self.proc = None
        self.hub = hub
        self.expect_running = False
        self.env = {}  # extra environment (a stand-in GPU driver)
        self.telemetry_interval = "1"
        self.hub_wait = "5"
        self.report_interval = "0.5"
        self.extra_args = []

    def start(self):
        self.expect_running = True
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.update(self.env)
        self.proc = subprocess.Popen(
            [self.bins.agent, "run", "--state-dir", self.state, "--trust-dir", self.trust,
             "--serve-binary", self.bins.serve, "--bootstrap", self.bootstrap,
             "--soak", "1", "--ready-timeout", "30", "--self-test-timeout", "10",
             "--poll-interval", "0.5", "--hub-wait", self.hub_wait,
             "--report-interval", self.report_interval,
             "--telemetry-interval", self.telemetry_interval, "--stop-grace", "5"]
            + self.extra_args,
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def stop(self):
        self.expect_running = False
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.id}: agent did not stop within 20 s of SIGTERM")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def serve_port(self):
        with open(os.path.join(self.state, "current", "port.json")) as f:
            return json.load(f)["http"]

    def infer(self, timeout=5):
        """add_one(INPUT) through the device's outpost-serve."""
        conn = http.client.HTTPConnection(HOST, self.serve_port(), timeout=timeout)
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                       "data": INPUT}]})
        conn.request("POST", "/v2/models/add_one/infer", body=body,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = json.loads(response.read())
        conn.close()
        if response.status != 200:
            raise NotServing(f"{self.id}: infer answered {response.status}: {payload}")
        return payload["outputs"][0]["data"]

    def agent_state(self):
        with open(os.path.join(self.state, "state.json")) as f:
            return json.load(f)


class Load:
    """Steady inference traffic on every device (a thread each, keep-alive
    connections), so latency gates have data even on a loaded machine."""

    def __init__(self, devices):
        self.devices = devices
        self.stopping = threading.Event()
        self.errors = 0
        self.threads = [threading.Thread(target=self.drive, args=(d,), daemon=True)
                        for d in devices]

    def start(self):
        for t in self.threads:
            t.start()

    def drive(self, device):
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                       "data": INPUT}]})
        conn, port = None, None
        while not self.stopping.is_set():
            try:
                if device.proc is None or device.proc.poll() is not None:
                    time.sleep(0.1)
                    continue
                current = device.serve_port()
                if conn is None or current != port:
                    if conn:
                        conn.close()
                    port = current
                    conn = http.client.HTTPConnection(HOST, port, timeout=2)
                conn.request("POST", "/v2/models/add_one/infer", body=body,
                             headers={"Content-Type": "application/json"})
                conn.getresponse().read()
                time.sleep(0.002)
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                self.errors += 1
                if conn:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn:
            conn.close()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=10)
