#!/usr/bin/env python3
"""The hub's web dashboard in a real browser (issue 6): headless Chromium
driven by playwright-core (tests/e2e/dashboard_browser.mjs, one step per
run) against a real outpost-hub on loopback with three real devices
(outpost-agent + outpost-serve each, tests/e2e/fleet.py).

Steps: sign in with a token and see the fleet and its alerts panel; open a device; start a rollout
from the Releases page, pause and resume it, watch it advance to completed;
start a release whose self-test fails and see a gate halt it; a viewer sees no
button that changes anything and the API refuses it; compare two releases
on the same devices. Screenshots of every page go to tests/artifacts/dashboard/.

Skips (exit 77) only when Chromium is absent. Environment (set by ctest):
those of fleet.py plus OUTPOST_WEB_NODE_MODULES (the build tree's
node_modules) and OUTPOST_ARTIFACTS.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICES = 3
CHROMIUM = os.environ.get("OUTPOST_CHROMIUM", "/usr/bin/chromium")


def chromium_missing():
    return not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK))


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bins = fleet.Bins()
        cls.node_modules = fleet.env_path("OUTPOST_WEB_NODE_MODULES")
        cls.artifacts = os.path.join(
            os.environ.get("OUTPOST_ARTIFACTS", os.path.join(HERE, "..", "artifacts")),
            "dashboard")
        shutil.rmtree(cls.artifacts, ignore_errors=True)
        cls.tmp = tempfile.TemporaryDirectory(prefix="outpost-dashboard-")
        root = cls.tmp.name
        cls.releases = fleet.Releases(cls.bins, root)
        cls.releases.build("r1", 10, version=1, expect=1.0)
        cls.releases.build("r2", 20, version=2, expect=2.0)
        # Answers x + 2 where its self-test expects x + 1: the canary fails its
        # health gate and rolls back, and the install-failure gate halts it.
        cls.releases.build("r3-bad", 30, version=2, expect=1.0)
        cls.hub = fleet.Hub(cls.bins, root)
        cls.hub.create_admin_token()
        cls.hub.trust(cls.releases.public_key)
        cls.hub.start()
        cls.devices = []
        cls.load = None
        try:
            cls.tokens = {"admin": cls.hub.token}
            for role in ("operator", "viewer"):
                status, body = cls.hub.api("POST", "/api/v1/admin/tokens",
                                           {"name": f"{role}-e2e", "role": role})
                assert status == 201, (status, body)
                cls.tokens[role] = body["token"]
            for i in range(DEVICES):
                d = fleet.Device(cls.bins, root, f"dash-{i}", cls.hub)
                shutil.copy(cls.releases.public_key, d.trust)
                cls.hub.bootstrap_file(d.bootstrap, d.id, site="north" if i < 2 else "south")
                d.start()
                cls.devices.append(d)
            def online(device_id):
                status, body = cls.hub.api("GET", f"/api/v1/admin/devices/{device_id}")
                return status == 200 and body["online"]
            fleet.wait_for(lambda: all(online(d.id) for d in cls.devices), 90,
                           "every device enrolled and online")
            # The fleet runs r1 before the browser arrives, under steady load
            # (latency telemetry needs a real workload).
            for name in ("r1", "r2", "r3-bad"):
                cls.hub.push(cls.releases.paths[name])
            rid = cls.hub.rollout("r1", ["100%"], soak=1)
            fleet.wait_for(lambda: cls.hub.rollout_state(rid)["state"] == "completed", 180,
                           "r1 on every device")
            cls.load = fleet.Load(cls.devices)
            cls.load.start()
            fleet.wait_for(lambda: all(
                cls.samples(d.id, "latency_p95_ms") >= 3 for d in cls.devices), 90,
                "latency telemetry of r1 from every device")
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.load:
            cls.load.stop()
        problems = []
        for d in cls.devices:
            try:
                d.stop()
            except AssertionError as e:  # reported, and the rest still stop
                d.kill()
                problems.append(str(e))
        cls.hub.stop()
        if problems:
            print("teardown:", "; ".join(problems), file=sys.stderr)
        cls.tmp.cleanup()

    @classmethod
    def samples(cls, device_id, metric):
        status, body = cls.hub.api(
            "GET", f"/api/v1/admin/devices/{device_id}/telemetry?metrics={metric}&window_s=600")
        assert status == 200, (status, body)
        return len(body["series"][metric])

    def browser(self, step, timeout=300, **args):
        env = dict(os.environ, HUB_URL=self.hub.url, TOKENS=json.dumps(self.tokens),
                   ARTIFACTS=self.artifacts, NODE_MODULES=self.node_modules, CHROMIUM=CHROMIUM,
                   STEP_ARGS=json.dumps(args))
        result = subprocess.run(["node", os.path.join(HERE, "dashboard_browser.mjs"), step],
                                env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            print(f"--- hub log (tail)\n{self.hub.log_text()[-4000:]}", file=sys.stderr)
            self.fail(f"browser step {step} failed:\n{result.stdout}\n{result.stderr}")
        seen = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertEqual(seen["pageErrors"], [], f"uncaught errors in the dashboard ({step})")
        # The browser logs refused API calls (401, 404) itself; anything
        # else (a CSP violation, a failed asset) is a bug.
        unexpected = [e for e in seen["consoleErrors"] if "Failed to load resource" not in e]
        self.assertEqual(unexpected, [], f"console errors ({step})")
        return seen

    def test_1_sign_in_and_see_the_fleet(self):
        seen = self.browser("fleet")
        self.assertEqual(seen["devices"], DEVICES)
        self.assertEqual(seen["online"], DEVICES)
        self.assertEqual(seen["rows"], DEVICES)
        self.assertIn("r1", seen["versions"])
        self.assertIn("north", seen["bySite"])
        self.assertIn("south", seen["bySite"])
        # Without an alerts API (404) the panel says so plainly and the page
        # still works; with one, it lists alerts or says none fire.
        status, _ = self.hub.api("GET", "/api/v1/admin/alerts")
        if status == 404:
            self.assertIn("Alerts unavailable", seen["alerts"])
        else:
            self.assertNotIn("unavailable", seen["alerts"])

    def test_2_open_a_device(self):
        seen = self.browser("device", device="dash-0")
        self.assertEqual(seen["running"], "r1")
        self.assertIn("committed", seen["history"])
        self.assertIn("r1", seen["history"])
        self.assertEqual(seen["canvases"] >= 1, True, seen)

    def test_3_start_a_rollout_and_watch_it_advance(self):
        seen = self.browser("rollout", release="r2", waves="1, 100%", soak=2)
        self.assertEqual(seen["state"], "completed", seen)
        # The page showed progress as it happened, not only the end.
        self.assertIn(f"{DEVICES} of {DEVICES} committed", seen["progress"])
        self.assertGreaterEqual(len(seen["progress"]), 2, seen["progress"])
        final = self.hub.rollout_state(seen["id"])
        self.assertEqual(final["counts"], {"committed": DEVICES})
        for d in self.devices:
            self.assertEqual(self.hub.device(d.id)["current_release"], "r2")
        type(self).r2_rollout = seen["id"]

    def test_4_a_gate_halts_a_bad_release(self):
        # A deterministic gate: the canary's self-test fails, it rolls back,
        # the install-failure gate halts the rollout. (The p95 gate is proven
        # through the API by e2e_fleet; driven from the browser on a loaded
        # two-core machine its telemetry timing made this step flaky.)
        seen = self.browser("gate", release="r3-bad", timeout=400)
        self.assertIn("halted", seen["state"])
        self.assertIn("install failures", seen["reason"])
        self.assertIn("breached", seen["gates"])
        final = self.hub.rollout_state(seen["id"])
        self.assertEqual(final["state"], "halted")
        canary = next(d["device_id"] for d in final["devices"] if d["wave"] == 0)
        type(self).canary = canary
        fleet.wait_for(lambda: self.hub.device(canary)["current_release"] == "r2", 90,
                       f"the canary {canary} back on r2")

    def test_5_a_viewer_changes_nothing(self):
        seen = self.browser("viewer", rollout=getattr(self, "r2_rollout", 1), release="r2")
        self.assertEqual(seen["buttons"], 0, "a viewer sees a button that changes things")
        self.assertEqual(seen["rolloutLinks"], 0)
        self.assertIn("needs an operator or admin token", seen["newRollout"])
        self.assertEqual(seen["refused"]["status"], 403, seen["refused"])
        self.assertIn("operator role", seen["refused"]["body"]["error"])

    def test_6_compare_two_versions(self):
        seen = self.browser("compare", a="r1", b="r2")
        self.assertIn(f"On the same {DEVICES} device", seen["sameDevices"])
        p95 = seen["rows"]["p95 latency (ms)"]
        self.assertNotEqual(p95[0], "—", seen["rows"])
        self.assertNotEqual(p95[1], "—", seen["rows"])
        self.assertGreaterEqual(seen["charts"], 4)


if __name__ == "__main__":
    if chromium_missing():
        print(f"SKIP: {CHROMIUM} is not installed (scripts/deps.sh installs chromium)")
        sys.exit(77)
    unittest.main(verbosity=2)
