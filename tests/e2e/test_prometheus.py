#!/usr/bin/python3
"""A real Prometheus scrapes a real outpost-hub and outpost-serve with deploy/prometheus's rules.

Starts the hub (plain HTTP on loopback) with two enrolled devices, one of them
reporting a temperature over the limit; outpost-serve with a model that falls
back from CUDA to CPU and one whose load fails; then Prometheus (Debian's
package) on a free loopback port with a temporary TSDB, scraping both every
second and evaluating deploy/prometheus/rules every second. Checks, through
Prometheus' HTTP API:
  - both targets are up and the key series carry the expected values;
  - every metric and recorded series that a rule or a Grafana dashboard in
    deploy/grafana references exists in what Prometheus collected.

Environment: OUTPOST_HUB_BIN, OUTPOST_SERVE_BIN, OUTPOST_TEST_MODELS,
PROMETHEUS_BIN (default /usr/bin/prometheus).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES = os.path.join(ROOT, "deploy", "prometheus", "rules", "outpost.rules.yml")
DASHBOARDS = os.path.join(ROOT, "deploy", "grafana")
PROMETHEUS = os.environ.get("PROMETHEUS_BIN", "/usr/bin/prometheus")
HUB = os.environ.get("OUTPOST_HUB_BIN", "")

# Series names in PromQL: ours, the process collector's, and recording
# rules (level:metric:operations).
NAME = re.compile(r"\b(outpost_[a-z0-9_]+|process_[a-z0-9_]+|[a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method, url, body=None, token=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def wait_until(fn, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last})")


def referenced_names():
    """{name: [where]} for every series a rule or dashboard expression names."""
    names = {}
    with open(RULES) as f:
        rules_text = f.read()
    # Expressions only: the expr: lines and the indented blocks under "expr: |".
    exprs, block = [], None
    for line in rules_text.splitlines():
        stripped = line.strip()
        if block is not None:
            indent = len(line) - len(line.lstrip())
            if stripped and indent > block:
                exprs.append(stripped)
                continue
            block = None
        if stripped.startswith("expr:"):
            rest = stripped[len("expr:"):].strip()
            if rest == "|":
                block = len(line) - len(line.lstrip())
            else:
                exprs.append(rest)
    for e in exprs:
        for n in NAME.findall(e):
            names.setdefault(n, set()).add("rules")
    for file in sorted(os.listdir(DASHBOARDS)):
        if not file.endswith(".json"):
            continue
        with open(os.path.join(DASHBOARDS, file)) as f:
            board = json.load(f)
        stack = [board]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in ("expr", "query", "definition") and isinstance(v, str):
                        for n in NAME.findall(v):
                            names.setdefault(n, set()).add(file)
                    else:
                        stack.append(v)
            elif isinstance(node, list):
                stack.extend(node)
    return names


class PrometheusTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="outpost-prom-")
        cls.procs = []
        cls.serve = None
        try:
            cls._start_hub()
            cls._feed_hub()
            cls._start_serve()
            cls._start_prometheus()
        except BaseException:
            cls._stop_all()
            raise

    @classmethod
    def tearDownClass(cls):
        cls._stop_all()

    @classmethod
    def _stop_all(cls):
        for proc, log in reversed(cls.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
        cls.procs = []
        if cls.serve is not None:
            serve, cls.serve = cls.serve, None
            try:
                serve.stop()
            finally:
                serve.cleanup()
        if os.environ.get("KEEP_TMP") is None:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def _spawn(cls, name, cmd):
        log = open(os.path.join(cls.tmp, name + ".log"), "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        cls.procs.append((proc, log))
        return proc

    @classmethod
    def _log(cls, name):
        try:
            with open(os.path.join(cls.tmp, name + ".log"), "rb") as f:
                return f.read().decode(errors="replace")[-6000:]
        except OSError:
            return ""

    @classmethod
    def _start_hub(cls):
        data = os.path.join(cls.tmp, "hub")
        out = subprocess.run([HUB, "admin", "create-token", "--data", data, "--name", "prom-test",
                              "--role", "admin", "--json"], capture_output=True, check=True)
        cls.token = json.loads(out.stdout)["token"]
        port_file = os.path.join(cls.tmp, "hub.port")
        cls._spawn("hub", [HUB, "serve", "--data", data, "--insecure-http", "--port", "0",
                           "--port-file", port_file, "--alert-interval", "1"])

        def port():
            with open(port_file) as f:
                return int(f.read().strip() or 0)
        cls.hub_port = wait_until(lambda: os.path.exists(port_file) and port(), 30, "hub port")
        cls.hub = f"http://127.0.0.1:{cls.hub_port}"

    @classmethod
    def _enroll(cls, device_id, site):
        boot = http_json("POST", cls.hub + "/api/v1/admin/bootstrap-tokens",
                         {"uses": 1, "site": site}, cls.token)
        enrolled = http_json("POST", cls.hub + "/api/v1/device/enroll",
                             {"token": boot["token"], "device_id": device_id})
        return enrolled["token"]

    @classmethod
    def _feed_hub(cls):
        hot = cls._enroll("cam-hot", "store-1")
        cls._enroll("cam-quiet", "store-2")  # never heard from again: offline
        http_json("POST", cls.hub + "/api/v1/device/status",
                  {"events": [{"seq": 1, "state": "committed", "release": ""}],
                   "state": {"state": "committed"}}, hot)
        http_json("POST", cls.hub + "/api/v1/device/telemetry",
                  {"batch_id": "b1", "samples": [{"metric": "temperature_c", "value": 97}]}, hot)

        def firing():
            alerts = http_json("GET", cls.hub + "/api/v1/admin/alerts", token=cls.token)["alerts"]
            return [a for a in alerts if a["name"] == "temperature_high"]
        wait_until(firing, 30, "the hub to fire temperature_high")

    @classmethod
    def _start_serve(cls):
        cls.serve = harness.Server(
            models=["add_one", "two_io"],
            configs={"add_one": "execution_providers: [cuda, cpu]\n",  # no GPU here: fallback
                     "two_io": "max_batch_size: -3\n"},                  # a load failure
            flags=["--strict-readiness", "false"], wait="live").start()
        wait_until(lambda: cls.serve.get("/v2/models/add_one/ready").status == 200, 30,
                   "add_one ready")
        for i in range(20):
            resp = cls.serve.infer_json("add_one", [("x", "FP32", [1, 4], [[i, 0, 0, 0]])])
            assert resp.status == 200, resp

    @classmethod
    def _start_prometheus(cls):
        rules = os.path.join(cls.tmp, "outpost.rules.yml")
        with open(RULES) as f:
            # Evaluate every second instead of every 30 s.
            text = re.sub(r"interval: 30s", "interval: 1s", f.read())
        with open(rules, "w") as f:
            f.write(text)
        config = os.path.join(cls.tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: outpost-hub
    static_configs: [{{targets: ["127.0.0.1:{cls.hub_port}"]}}]
  - job_name: outpost-serve
    static_configs: [{{targets: ["127.0.0.1:{cls.serve.port}"], labels: {{site: "store-1"}}}}]
""")
        cls.prom_port = free_port()
        cls.prom = f"http://127.0.0.1:{cls.prom_port}"
        cls._spawn("prometheus", [PROMETHEUS, f"--config.file={config}",
                                  f"--storage.tsdb.path={os.path.join(cls.tmp, 'tsdb')}",
                                  f"--web.listen-address=127.0.0.1:{cls.prom_port}",
                                  "--log.level=warn"])
        wait_until(lambda: urllib.request.urlopen(cls.prom + "/-/ready", timeout=2).status == 200,
                   60, "Prometheus ready")

    def api(self, path, **params):
        url = self.prom + "/api/v1/" + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            doc = json.loads(response.read())
        self.assertEqual(doc["status"], "success", doc)
        return doc["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def wait_query(self, expr, timeout=60):
        try:
            return wait_until(lambda: self.query(expr), timeout, expr)
        except AssertionError:
            print(self._log("prometheus"), file=sys.stderr)
            raise

    def test_targets_are_up_and_key_series_are_collected(self):
        up = self.wait_query('up == 1')
        self.assertEqual(sorted(s["metric"]["job"] for s in up), ["outpost-hub", "outpost-serve"],
                         self.api("targets"))
        devices = self.wait_query('outpost_hub_devices{status="active"}')
        by_site = {(s["metric"]["site"], s["metric"]["online"]): float(s["value"][1])
                   for s in devices}
        self.assertEqual(by_site, {("store-1", "true"): 1, ("store-2", "false"): 1})
        hot = self.wait_query('outpost_hub_alerts_firing{alert="temperature_high"} == 1')
        self.assertEqual(hot[0]["metric"]["severity"], "warning")
        requests = self.wait_query(
            'outpost_inference_requests_total{job="outpost-serve",model="add_one",status="success"}')
        self.assertGreaterEqual(float(requests[0]["value"][1]), 20)
        self.wait_query('outpost_execution_provider_fallbacks_total{model="add_one",provider="cuda"}')
        self.wait_query('outpost_model_load_failures_total{model="two_io"}')
        # The rules ran: recorded series, and the hub's alert relayed as a
        # Prometheus alert.
        # Traffic while Prometheus watches: the error ratio becomes a number (0/0 before).
        for i in range(20):
            self.assertEqual(self.serve.infer_json(
                "add_one", [("x", "FP32", [1, 4], [[i, 0, 0, 0]])]).status, 200)
            time.sleep(0.1)
        self.wait_query('instance:outpost_inference_errors:ratio_rate5m == 0')
        offline = self.wait_query('site:outpost_hub_devices_offline:sum')
        self.assertEqual({s["metric"]["site"]: float(s["value"][1]) for s in offline},
                         {"store-2": 1})
        alerts = wait_until(lambda: [a for a in self.api("alerts")["alerts"]
                                     if a["labels"]["alertname"] == "OutpostHubAlert"
                                     and a["labels"].get("alert") == "temperature_high"],
                            60, "OutpostHubAlert for temperature_high")
        self.assertEqual(alerts[0]["labels"]["severity"], "warning")

    def test_every_metric_a_rule_or_dashboard_uses_is_collected(self):
        names = referenced_names()
        self.assertIn("outpost_hub_devices", names)
        self.assertIn("instance:outpost_inference_errors:ratio_rate5m", names)
        self.assertTrue(any(w.endswith(".json") for ws in names.values() for w in ws),
                        "no dashboard expression found")
        # Give every recording rule and scrape a few rounds.
        self.wait_query('model_version:outpost_inference_request_duration_p95:rate5m')
        self.wait_query('outpost_model_load_failures_total')
        missing = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            collected = set(self.api("label/__name__/values"))
            missing = {n: sorted(w) for n, w in names.items() if n not in collected}
            if not missing:
                break
            time.sleep(1)
        self.assertEqual(missing, {}, "referenced but not collected by Prometheus")


if __name__ == "__main__":
    if not HUB or not os.path.exists(PROMETHEUS):
        print("skipped: needs OUTPOST_HUB_BIN and Prometheus", file=sys.stderr)
        sys.exit(77)
    unittest.main(verbosity=2)
