#!/usr/bin/env python3
"""A hub and five real devices on loopback, through the rollouts issue 4
names: a good release in waves 1 -> 50% -> 100%; a release whose self-test
fails stops at the canary and nobody else downloads it; a release 3x slower
passes its self-tests but the p95 latency gate halts it and the canary goes
back; the hub killed and restarted mid-rollout finishes the rollout; a device
offline during its wave catches up when it returns.

FLEET_DB=postgres runs the same suite on a PostgreSQL server the test starts,
with two hub processes sharing it (devices split between them).
"""

import json
import os
import sys
import shutil
import subprocess
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402

DEVICES = 5
ANSWER = {1: [2.0, 3.0, 4.0, 5.0], 2: [3.0, 4.0, 5.0, 6.0]}


class FleetTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bins = fleet.Bins()
        cls.tmp = tempfile.TemporaryDirectory(prefix="outpost-fleet-")
        root = cls.tmp.name
        cls.releases = fleet.Releases(cls.bins, root)
        cls.releases.build("r1", 10, version=1, expect=1.0)
        cls.releases.build("r2-bad-selftest", 20, version=2, expect=1.0)  # answers +2
        cls.releases.build("r3-slow", 30, model="add_one_slow", version=1, expect=2.0)
        cls.releases.build("r4", 40, version=2, expect=2.0)
        cls.releases.build("r5", 50, version=1, expect=1.0)
        cls.pg = None
        db_url = ""
        if os.environ.get("FLEET_DB") == "postgres":
            import pgserver
            cls.pg = pgserver.PostgresServer()
            db_url = cls.pg.start()
        cls.hub = fleet.Hub(cls.bins, root, db_url=db_url)
        cls.hub.create_admin_token()
        cls.hub.trust(cls.releases.public_key)
        cls.hub.start()
        cls.hubs = [cls.hub]
        if cls.pg:
            # A second replica on the same database (its own data dir for
            # TLS and blobs would split artifacts: share the data dir).
            second = fleet.Hub(cls.bins, root, name="hub2", db_url=db_url, data_dir=cls.hub.data)
            second.token = cls.hub.token
            second.start()
            cls.hubs.append(second)
        cls.devices = []
        for i in range(DEVICES):
            hub = cls.hubs[i % len(cls.hubs)]
            d = fleet.Device(cls.bins, root, f"dev-{i}", hub)
            shutil.copy(cls.releases.public_key, d.trust)  # the golden image's release key
            if i == DEVICES - 1 and os.environ.get("OUTPOST_FAKE_NVML"):
                # A GPU box: the stand-in NVML library the GPU unit tests use.
                d.env = {"OUTPOST_NVML_LIBRARY": os.environ["OUTPOST_FAKE_NVML"]}
            hub.bootstrap_file(d.bootstrap, d.id)
            d.start()
            cls.devices.append(d)
        cls.timings = {}

        def online(device_id):
            status, body = cls.hub.api("GET", f"/api/v1/admin/devices/{device_id}")
            return status == 200 and body["online"]
        try:
            fleet.wait_for(lambda: all(online(d.id) for d in cls.devices), 60,
                           "every device enrolled and online")
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for d in cls.devices:
            d.stop()
        for h in cls.hubs:
            h.stop()
        if cls.pg:
            cls.pg.stop()
        if cls.timings:
            print("\nfleet timings:", json.dumps(cls.timings), file=sys.stderr)
        cls.tmp.cleanup()

    def dump_logs(self):
        for h in self.hubs:
            print(f"--- {h.dir} log (tail)\n{h.log_text()[-6000:]}", file=sys.stderr)
        for d in self.devices:
            print(f"--- {d.id} agent log (tail)\n{d.log_text()[-3000:]}", file=sys.stderr)

    def run(self, result=None):
        failures = len(result.failures) + len(result.errors) if result else 0
        outcome = super().run(result)
        if result and len(result.failures) + len(result.errors) > failures:
            self.dump_logs()
        return outcome

    def check_agents(self):
        for d in self.devices:
            if d.proc is not None and d.proc.poll() is not None and d.expect_running:
                raise AssertionError(f"{d.id}: agent exited {d.proc.returncode}")

    def wait_rollout(self, rollout_id, states, timeout):
        def reached():
            self.check_agents()
            r = self.hub.rollout_state(rollout_id)
            return r if r["state"] in states else None
        return fleet.wait_for(reached, timeout, f"rollout {rollout_id} to reach {states}",
                              interval=0.3)

    def assert_serving(self, device, release, answer):
        fleet.wait_for(lambda: device.agent_state()["committed"]["release"] == release, 60,
                       f"{device.id} committed {release}")
        # The runtime on the restored slot may still be starting.
        fleet.wait_for(lambda: device.infer() == answer, 30, f"{device.id} to answer {answer}")
        fleet.wait_for(lambda: self.hub.device(device.id)["current_release"] == release, 20,
                       f"the hub to know {device.id} runs {release}")

    def test_1_good_release_rolls_out_in_waves(self):
        self.hub.push(self.releases.paths["r1"])
        start = time.monotonic()
        rid = self.hub.rollout("r1", [1, "50%", "100%"], soak=1)
        final = self.wait_rollout(rid, ("completed", "halted"), 180)
        self.timings["r1_push_to_100pct_s"] = round(time.monotonic() - start, 1)
        self.assertEqual(final["state"], "completed", final["gates"])
        waves = sorted({d["wave"] for d in final["devices"]})
        self.assertEqual(waves, [0, 1, 2])
        self.assertEqual(sum(1 for d in final["devices"] if d["wave"] == 0), 1)
        self.assertEqual(final["counts"], {"committed": DEVICES})
        for d in self.devices:
            self.assert_serving(d, "r1", ANSWER[1])
        self.check_fleet_metrics()

    def test_0_inventory_has_the_devices_facts(self):
        for i, d in enumerate(self.devices):
            facts = self.hub.device(d.id)["facts"]
            self.assertTrue(facts["agent_version"])
            self.assertIn("cpu", facts["accelerators"])
            gpu = bool(d.env)
            self.assertEqual("cuda" in facts["accelerators"], gpu, (d.id, facts))
            self.assertTrue(facts["arch"])

    def check_fleet_metrics(self):
        status, text = self.hub.api("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertIn(f'outpost_hub_devices_by_release{{release="r1"}} {DEVICES}', text)
        promtool = shutil.which("promtool")
        if promtool:  # Debian's prometheus package (scripts/deps.sh)
            check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                                   capture_output=True)
            self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

    def test_2_failing_selftest_stops_at_the_canary(self):
        self.hub.push(self.releases.paths["r2-bad-selftest"])
        rid = self.hub.rollout("r2-bad-selftest", [1, "50%", "100%"], soak=1)
        final = self.wait_rollout(rid, ("halted", "completed"), 120)
        self.assertEqual(final["state"], "halted", final)
        canary = next(d["device_id"] for d in final["devices"] if d["wave"] == 0)
        for d in self.devices:
            self.assert_serving(d, "r1", ANSWER[1])
            events = self.hub.events(d.id)
            touched = [e for e in events if e["release"] == "r2-bad-selftest"]
            if d.id == canary:
                self.assertTrue(any(e["state"] == "rolled_back" for e in touched), touched)
                reasons = {e["reason"] for e in touched}
                self.assertIn("self_test_failed", reasons)
            else:
                self.assertEqual(touched, [], f"{d.id} must never download the bad release")

    def test_3_slow_release_is_halted_by_the_latency_gate(self):
        load = fleet.Load(self.devices)
        load.start()
        try:
            time.sleep(4)  # baseline telemetry of r1 under load
            self.hub.push(self.releases.paths["r3-slow"])
            # A long soak: the gate must halt the canary wave, however
            # slowly a loaded machine brings in heartbeats.
            rid = self.hub.rollout("r3-slow", [1, "100%"], soak=300,
                                   gates={"p95_regression_pct": 50, "min_samples": 2})
            final = self.wait_rollout(rid, ("halted", "completed"), 120)
        finally:
            load.stop()
        self.assertEqual(final["state"], "halted", final)
        self.assertIn("p95 latency regression", final["gates"]["halt_reason"])
        self.timings["r3_gate"] = {k: final["gates"].get(k) for k in
                                   ("baseline_p95_ms", "wave_p95_ms", "p95_regression_pct")}
        canary_id = next(d["device_id"] for d in final["devices"] if d["wave"] == 0)
        canary = next(d for d in self.devices if d.id == canary_id)
        # The hub sends the canary back to r1; the agent reverts to its other slot.
        self.assert_serving(canary, "r1", ANSWER[1])
        for d in self.devices:
            if d is not canary:
                self.assertEqual([e for e in self.hub.events(d.id) if e["release"] == "r3-slow"], [])

    def test_4_hub_restart_mid_rollout(self):
        self.hub.push(self.releases.paths["r4"])
        rid = self.hub.rollout("r4", [1, "50%", "100%"], soak=2)
        fleet.wait_for(lambda: self.hub.rollout_state(rid)["counts"].get("committed", 0) >= 1, 90,
                       "the canary to commit r4")
        self.hub.kill()
        time.sleep(1)
        self.hub.start(port=self.hub.port)  # devices know the hub by its URL
        final = self.wait_rollout(rid, ("completed", "halted"), 180)
        self.assertEqual(final["state"], "completed", final["gates"])
        for d in self.devices:
            self.assert_serving(d, "r4", ANSWER[2])

    def test_5_offline_device_catches_up(self):
        offline = self.devices[-1]
        offline.stop()
        self.hub.push(self.releases.paths["r5"])
        rid = self.hub.rollout("r5", [1, "100%"], soak=1, deadline=300)
        fleet.wait_for(
            lambda: self.hub.rollout_state(rid)["counts"].get("committed", 0) == DEVICES - 1, 120,
            "every online device to commit r5")
        self.assertEqual(self.hub.rollout_state(rid)["state"], "running")
        offline.start()
        final = self.wait_rollout(rid, ("completed", "halted"), 120)
        self.assertEqual(final["state"], "completed", final["gates"])
        for d in self.devices:
            self.assert_serving(d, "r5", ANSWER[1])

    def test_6_maintenance_window_downloads_at_once_installs_inside(self):
        device = self.devices[0]
        self.releases.build("r6", 60, version=2, expect=2.0)
        self.hub.push(self.releases.paths["r6"])

        def clock(offset_s):
            t = time.localtime(time.time() + offset_s)
            return f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        opens_in = 12
        rid = self.hub.rollout("r6", ["100%"], soak=1, selector={"devices": [device.id]},
                               maintenance_window={"start": clock(opens_in),
                                                   "end": clock(opens_in + 600)})
        start = time.monotonic()
        downloads = os.path.join(device.state, "downloads")
        fleet.wait_for(lambda: any(n.endswith(".tar.zst") for n in os.listdir(downloads)), 10,
                       "the bundle downloaded ahead of the window")
        self.assertLess(time.monotonic() - start, opens_in - 2, "downloaded too late to tell")
        self.assertEqual(device.agent_state()["committed"]["release"], "r5",
                         "installed before its window opened")
        final = self.wait_rollout(rid, ("completed", "halted"), 120)
        self.assertEqual(final["state"], "completed", final["gates"])
        self.assertGreaterEqual(time.monotonic() - start, opens_in - 2)
        self.assert_serving(device, "r6", ANSWER[2])


if __name__ == "__main__":
    unittest.main(verbosity=2)
