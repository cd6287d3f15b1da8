#!/usr/bin/env python3
"""Store-and-forward telemetry and drift on a real device (issue 6, "On the
device"): a real outpost-hub behind a TCP proxy the test can cut, a real
outpost-agent supervising outpost-serve under inference load.

1. An hour offline under pipeline load: the release runs a pipeline (a
   generated folder of coloured images looping through color_classifier at
   PIPELINE_FPS) whose results are marked for upload (a queue sink with
   `upload: true`, which the agent moves into its telemetry queue), beside
   API inference load. The proxy refuses connections for a simulated hour of
   heartbeats (3600 s / 10 s = 360 heartbeats at a 0.1 s interval); the
   agent is restarted with SIGTERM a third of the way and SIGKILLed two
   thirds of the way (its runtime dies with it), then the link comes back.
   Every queued sample must reach the hub exactly once and in order (the
   device's per-sample seq, stored by the hub), and so must every pipeline
   result (checked against a JSON-lines sink of the same pipeline); the
   backlog drain time and the bytes on the wire are measured.
2. A crash between sending a batch and recording its acknowledgement
   (OUTPOST_CRASH_AT=telemetry.after_send): the restarted agent re-sends the
   same batch, which the hub stores once.
3. Drift: `outpost bundle baseline --from-metrics` captures the runtime's
   output-score histogram, a release carrying it as its baseline is rolled
   out, and the device reports drift_psi ~ 0 with the score's mean and p50.
4. Bytes: telemetry bytes per heartbeat on the wire (through the proxy).

Prints a summary (TELEMETRY-RESULT lines) for bench/RESULTS.md.

Environment: that of tests/e2e/fleet.py, plus OUTPOST_PIPELINE_MEDIA_BIN.
"""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402

INTERVAL_S = 0.1
SIMULATED_INTERVAL_S = 10  # the interval an hour of these heartbeats stands for
HOUR_HEARTBEATS = 3600 // SIMULATED_INTERVAL_S
PIPELINE_FPS = 20
MEDIA = os.environ.get("OUTPOST_PIPELINE_MEDIA_BIN")


class Proxy:
    """TCP pass-through to the hub (TLS stays end to end) that counts bytes
    and can go offline: `block()` closes the listener and every connection,
    so the agent sees connection refused; `unblock()` listens again."""

    def __init__(self, target_port):
        self.target = target_port
        self.lock = threading.Lock()
        self.up_bytes = 0
        self.down_bytes = 0
        self.conns = []
        self.listener = None
        probe = socket.socket()
        probe.bind((fleet.HOST, 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.unblock()

    def unblock(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((fleet.HOST, self.port))
        s.listen(16)
        self.listener = s
        threading.Thread(target=self.accept, args=(s,), daemon=True).start()

    def block(self):
        with self.lock:  # after this, accept() drops what it had in hand
            s, self.listener = self.listener, None
            conns, self.conns = self.conns, []
        if s is not None:  # not blocked already (a failed test may leave it so)
            s.close()
        for c in conns:
            for sock in c:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((fleet.HOST, self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                live = self.listener is listener
                if live:
                    self.conns.append((client, upstream))
            if not live:  # accepted just as the link went down
                client.close()
                upstream.close()
                continue
            threading.Thread(target=self.pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, False), daemon=True).start()

    def pump(self, src, dst, up):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    if up:
                        self.up_bytes += len(data)
                    else:
                        self.down_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def counters(self):
        with self.lock:
            return self.up_bytes, self.down_bytes


class TelemetryTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bins = fleet.Bins()
        cls.tmp = tempfile.TemporaryDirectory(prefix="outpost-telemetry-")
        root = cls.tmp.name
        cls.root = root
        cls.releases = fleet.Releases(cls.bins, root)
        # The release's pipeline: coloured images looping through
        # color_classifier, each result to a JSON-lines file (the test's
        # record of every result made) and then to the upload queue.
        frames = os.path.join(root, "frames")
        os.makedirs(frames)
        if not MEDIA:
            raise unittest.SkipTest("OUTPOST_PIPELINE_MEDIA_BIN is not set: run through ctest")
        for i, colour in enumerate(["red", "green", "blue"]):
            subprocess.run([MEDIA, "image", os.path.join(frames, f"{i}.png"), "32", "32", colour],
                           check=True)
        cls.results_jsonl = os.path.join(root, "results.jsonl")
        pipeline = os.path.join(root, "colours.pipeline.yaml")
        with open(pipeline, "w") as f:
            f.write(f"""name: colours
source: {{type: folder, path: {frames}, loop: true, max_fps: {PIPELINE_FPS}}}
model: color_classifier
postprocess: {{type: classification, top_k: 1}}
sinks:
  - {{type: jsonl, path: {cls.results_jsonl}, max_bytes: 1000000000}}
  - {{type: queue, upload: true}}
""")
        cls.releases.build("r1", 10, extra_models=["color_classifier"], configs=[pipeline])
        cls.hub = fleet.Hub(cls.bins, root)
        cls.hub.create_admin_token()
        cls.hub.trust(cls.releases.public_key)
        cls.hub.start()
        cls.proxy = Proxy(cls.hub.port)
        cls.device = fleet.Device(cls.bins, root, "dev-t", cls.hub)
        shutil.copy(cls.releases.public_key, cls.device.trust)
        cls.hub.bootstrap_file(cls.device.bootstrap, cls.device.id)
        with open(cls.device.bootstrap) as f:
            bootstrap = json.load(f)
        bootstrap["hub_url"] = f"https://127.0.0.1:{cls.proxy.port}"  # through the proxy
        with open(cls.device.bootstrap, "w") as f:
            json.dump(bootstrap, f)
        cls.device.telemetry_interval = str(INTERVAL_S)
        cls.device.extra_args = ["--telemetry-retry-max", "1"]
        cls.device.start()
        cls.load = None
        cls.results = []
        try:
            fleet.wait_for(lambda: cls.hub.api("GET", f"/api/v1/admin/devices/{cls.device.id}")[0]
                           == 200, 60, "the device enrolled")
            cls.hub.push(cls.releases.paths["r1"])
            rollout = cls.hub.rollout("r1", [1], soak=1)
            fleet.wait_for(lambda: cls.hub.rollout_state(rollout)["state"] == "completed", 120,
                           "r1 committed on the device")
            fleet.wait_for(lambda: cls.device.infer() == [2.0, 3.0, 4.0, 5.0], 30, "r1 serving")
            cls.load = fleet.Load([cls.device])
            cls.load.start()
        except BaseException:
            print(f"--- hub log (tail)\n{cls.hub.log_text()[-3000:]}", file=sys.stderr)
            print(f"--- agent log (tail)\n{cls.device.log_text()[-6000:]}", file=sys.stderr)
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for line in cls.results:
            print("TELEMETRY-RESULT " + line, file=sys.stderr)
        if cls.load:
            cls.load.stop()
        try:
            cls.device.stop()
            cls.hub.stop()
        finally:
            cls.device.kill()
            cls.hub.kill()
            cls.tmp.cleanup()

    def run(self, result=None):
        failures = len(result.failures) + len(result.errors) if result else 0
        outcome = super().run(result)
        if result and len(result.failures) + len(result.errors) > failures:
            print(f"--- hub log (tail)\n{self.hub.log_text()[-4000:]}", file=sys.stderr)
            print(f"--- agent log (tail)\n{self.device.log_text()[-6000:]}", file=sys.stderr)
        return outcome

    # --- helpers -----------------------------------------------------------

    def hub_db(self):
        return sqlite3.connect(f"file:{os.path.join(self.hub.data, 'hub.db')}?mode=ro", uri=True,
                               timeout=30)

    def queue_db(self):
        return sqlite3.connect(
            f"file:{os.path.join(self.device.state, 'telemetry.db')}?mode=ro", uri=True,
            timeout=30)

    def hub_seqs(self):
        """The device's sample seqs in the order the hub stored them."""
        with self.hub_db() as db:
            return [r[0] for r in db.execute(
                "SELECT seq FROM telemetry_samples WHERE device_id = ? AND seq IS NOT NULL "
                "ORDER BY rowid", (self.device.id,))]

    def hub_max_seq(self):
        with self.hub_db() as db:
            return db.execute("SELECT COALESCE(MAX(seq), 0) FROM telemetry_samples "
                              "WHERE device_id = ?", (self.device.id,)).fetchone()[0]

    def queued_heartbeats(self):
        with self.queue_db() as db:
            return db.execute("SELECT COUNT(*) FROM samples WHERE body LIKE "
                              "'%\"metric\":\"runtime_up\"%'").fetchone()[0]

    def queue_max_seq(self):
        with self.queue_db() as db:
            return db.execute("SELECT COALESCE(MAX(seq), 0) FROM samples").fetchone()[0]

    def hub_results(self):
        """The device's pipeline results as the hub stored them (seq order):
        (frame index, frame timestamp_ms)."""
        with self.hub_db() as db:
            rows = db.execute(
                "SELECT labels FROM telemetry_samples WHERE device_id = ? AND "
                "metric = 'pipeline_result' ORDER BY seq", (self.device.id,)).fetchall()
        out = []
        for (labels,) in rows:
            labels = json.loads(labels)
            self.assertEqual(labels["pipeline"], "colours")
            frame = labels["result"]["frame"]
            out.append((frame["index"], frame["timestamp_ms"]))
        return out

    def written_results(self):
        """Every result the pipeline wrote (its JSON-lines sink, written just
        before the upload queue), in order."""
        out = []
        with open(self.results_jsonl) as f:
            for line in f:
                try:
                    frame = json.loads(line)["frame"]
                except ValueError:
                    break  # a line being written
                out.append((frame["index"], frame["timestamp_ms"]))
        return out

    def assert_results_exactly_once_in_order(self, kills):
        """The hub's results are the written ones, in order, each once. A
        runtime killed between its two sinks may leave its last result in
        the JSON lines only (at most `kills` of those)."""
        hub, written = self.hub_results(), self.written_results()
        self.assertTrue(hub, "no pipeline result reached the hub")
        self.assertEqual(len(hub), len(set(hub)), "a result was stored twice")
        i = skipped = 0
        for n, result in enumerate(written):
            if i == len(hub):
                break
            if result == hub[i]:
                i += 1
                continue
            run_ends = n + 1 < len(written) and written[n + 1][0] == 0
            self.assertTrue(run_ends, f"result {result} (line {n + 1}) is missing at the hub "
                                      f"(next there: {hub[i]})")
            skipped += 1
        self.assertEqual(i, len(hub), f"the hub holds results never written or out of order: "
                                      f"{hub[i:i + 3]}")
        self.assertLessEqual(skipped, kills)
        # source.max_fps paces the looped folder: no run reads faster.
        runs, run = [], []
        for index, t in written:
            if index == 0 and run:
                runs.append(run)
                run = []
            run.append(t)
        runs.append(run)
        for run in runs:
            if len(run) > 20:
                fps = (len(run) - 1) / ((run[-1] - run[0]) / 1000)
                self.assertLessEqual(fps, PIPELINE_FPS * 1.05, "max_fps was not kept")
        return len(hub)

    def assert_exactly_once_in_order(self):
        seqs = self.hub_seqs()
        self.assertTrue(seqs, "no sample with a seq reached the hub")
        self.assertEqual(len(seqs), len(set(seqs)), "a sample was stored twice")
        self.assertEqual(seqs, sorted(seqs), "samples were stored out of order")
        self.assertEqual(seqs, list(range(1, seqs[-1] + 1)), "a sample is missing")
        return seqs

    def check_agent(self):
        d = self.device
        if d.proc.poll() is not None and d.expect_running:
            raise AssertionError(f"agent exited {d.proc.returncode}")

    # --- tests -------------------------------------------------------------

    def queued_results(self):
        with self.queue_db() as db:
            return db.execute("SELECT COUNT(*) FROM samples WHERE body LIKE "
                              "'%\"metric\":\"pipeline_result\"%'").fetchone()[0]

    def test_1_an_hour_offline_arrives_exactly_once_in_order(self):
        fleet.wait_for(lambda: self.hub_max_seq() > 50, 60, "telemetry reaching the hub")
        fleet.wait_for(lambda: len(self.hub_results()) > 10, 60, "pipeline results on the hub")
        self.proxy.block()
        offline_at = time.monotonic()
        # A batch the hub had received whole before the link went down may
        # still be committing: wait until the hub's figures stop moving.
        sent_before, results_before = self.hub_max_seq(), len(self.hub_results())
        for _ in range(20):
            time.sleep(0.5)
            now = (self.hub_max_seq(), len(self.hub_results()))
            if now == (sent_before, results_before):
                break
            sent_before, results_before = now

        def queued(n):
            self.check_agent()
            return self.queued_heartbeats() >= n
        third = HOUR_HEARTBEATS // 3
        fleet.wait_for(lambda: queued(third), 300, f"{third} heartbeats queued offline", 0.5)
        self.device.stop()  # a clean restart a third of the way through
        self.device.start()
        fleet.wait_for(lambda: queued(2 * third), 300, f"{2 * third} heartbeats queued", 0.5)
        self.device.kill()  # and SIGKILL two thirds of the way
        self.device.start()
        fleet.wait_for(lambda: queued(HOUR_HEARTBEATS), 300,
                       f"{HOUR_HEARTBEATS} heartbeats queued offline", 0.5)
        offline_s = time.monotonic() - offline_at
        backlog_seq = self.queue_max_seq()
        with self.queue_db() as db:
            backlog_samples, backlog_bytes = db.execute(
                "SELECT COUNT(*), SUM(bytes) FROM samples").fetchone()
        backlog_results = self.queued_results()
        self.assertGreater(backlog_results, 100, "the pipeline's results were not queued")
        self.assertEqual(self.hub_max_seq(), sent_before, "samples got through the outage")

        self.proxy.unblock()
        up0, down0 = self.proxy.counters()
        online_at = time.monotonic()
        fleet.wait_for(lambda: self.hub_max_seq() >= backlog_seq, 300, "the backlog drained", 0.2)
        drain_s = time.monotonic() - online_at
        up1, down1 = self.proxy.counters()
        seqs = self.assert_exactly_once_in_order()
        results = self.assert_results_exactly_once_in_order(kills=2)
        with self.hub_db() as db:
            dropped = db.execute("SELECT COUNT(*) FROM telemetry_samples WHERE device_id = ? AND "
                                 "metric = 'telemetry_dropped'", (self.device.id,)).fetchone()[0]
        self.assertEqual(dropped, 0)
        # The admin API serves them as telemetry (docs/device-api.md).
        status, body = self.hub.api(
            "GET", f"/api/v1/admin/telemetry?metric=pipeline_result&device={self.device.id}"
                   f"&source=raw&step=3600")
        self.assertEqual(status, 200, body)
        self.assertTrue(body["series"], body)
        self.assertEqual(body["series"][0]["labels"]["pipeline"], "colours")
        self.results.append(
            f"offline {offline_s:.1f} s: {backlog_samples} queued samples ({backlog_bytes} bytes "
            f"of JSON) from {HOUR_HEARTBEATS}+ heartbeats (an hour at a {SIMULATED_INTERVAL_S} s "
            f"interval) and {backlog_results} pipeline results ({PIPELINE_FPS} frames/s), agent "
            f"restarted (SIGTERM) a third and SIGKILLed two thirds of the way; drained in "
            f"{drain_s:.2f} s after the link came back ({(up1 - up0 + down1 - down0) / 1000:.0f} "
            f"kB on the wire); hub holds seq 1..{seqs[-1]} exactly once, in order, and "
            f"{results - results_before}+ results of the outage, each once, in order")

    def test_2_crash_between_send_and_ack_is_deduplicated(self):
        fleet.wait_for(lambda: self.hub_max_seq() > 0, 60, "telemetry reaching the hub")
        self.proxy.block()
        fleet.wait_for(lambda: self.queued_heartbeats() >= 20, 60, "a backlog", 0.5)
        self.device.stop()
        with self.hub_db() as db:
            batches_before = db.execute(
                "SELECT COUNT(*) FROM telemetry_batches WHERE device_id = ?",
                (self.device.id,)).fetchone()[0]
        # The restarted agent dies right after its first send, before the ack.
        self.device.env = {"OUTPOST_CRASH_AT": "telemetry.after_send:1"}
        self.device.start()
        self.proxy.unblock()
        fleet.wait_for(lambda: self.device.proc.poll() is not None, 60, "the agent crashing")
        self.assertEqual(self.device.proc.returncode, -9, self.device.log_text()[-2000:])
        with self.queue_db() as db:
            pending = db.execute(
                "SELECT COUNT(DISTINCT batch) FROM samples WHERE batch IS NOT NULL").fetchone()[0]
        self.assertEqual(pending, 1, "the sent batch is still in the queue, unacknowledged")
        self.device.env = {}
        self.device.start()
        fleet.wait_for(lambda: self.queued_heartbeats() <= 2, 60, "the backlog drained", 0.2)
        self.assert_exactly_once_in_order()
        with self.hub_db() as db:
            batches = db.execute("SELECT COUNT(*) FROM telemetry_batches WHERE device_id = ?",
                                 (self.device.id,)).fetchone()[0]
        self.assertGreater(batches, batches_before)

    def test_3_drift_against_a_captured_baseline(self):
        baseline = os.path.join(self.root, "baseline.json")
        url = f"http://127.0.0.1:{self.device.serve_port()}/metrics"
        fleet.wait_for(lambda: self.device.infer(), 30, "serving")
        out = fleet.run([self.bins.cli, "bundle", "baseline", "--from-metrics", url,
                         "--model", "add_one", "--output", "y", "--out", baseline])
        self.assertIn("written to", out)
        with open(baseline) as f:
            captured = json.load(f)["add_one"]
        # add_one(INPUT) = [2, 3, 4, 5]: top softmax probability 0.644, bin (0.6, 0.7].
        top = captured["bin_edges"].index(0.7) - 1
        self.assertGreater(captured["proportions"][top], 0.99, captured)
        # A bad URL is a clear error with the I/O exit code.
        bad = subprocess.run([self.bins.cli, "bundle", "baseline", "--from-metrics",
                              "http://127.0.0.1:1/metrics", "--model", "add_one", "--output", "y",
                              "--out", baseline], capture_output=True, text=True)
        self.assertEqual(bad.returncode, 3, bad.stderr)

        self.releases.build("r2", 20, baseline=baseline)
        self.hub.push(self.releases.paths["r2"])
        started = time.time() * 1000
        rollout = self.hub.rollout("r2", [1], soak=1)
        fleet.wait_for(lambda: self.hub.rollout_state(rollout)["state"] == "completed", 120,
                       "r2 committed")

        def drift():
            with self.hub_db() as db:
                rows = db.execute(
                    "SELECT metric, value FROM telemetry_samples WHERE device_id = ? AND "
                    "device_time > ? AND metric IN ('drift_psi', 'score_mean', 'score_p50') "
                    "AND labels LIKE '%\"add_one\"%' "  # not r1's pipeline model
                    "ORDER BY rowid DESC LIMIT 30", (self.device.id, started)).fetchall()
            latest = {}
            for metric, value in rows:
                latest.setdefault(metric, value)
            return latest if len(latest) == 3 else None
        latest = fleet.wait_for(drift, 60, "drift samples from the new release")
        self.assertLess(latest["drift_psi"], 0.01, latest)
        self.assertAlmostEqual(latest["score_mean"], 0.6439, places=3)
        self.assertGreater(latest["score_p50"], 0.6)
        self.assertLessEqual(latest["score_p50"], 0.7)
        self.results.append(f"drift against the captured baseline: {json.dumps(latest)}")

    def test_4_bytes_per_heartbeat(self):
        # A quiet agent: long poll parked (240 s), no status reports, one
        # heartbeat every 2 s, under inference load (drift samples included).
        self.device.stop()
        self.device.telemetry_interval = "2"
        self.device.hub_wait = "240"
        self.device.report_interval = "10"
        self.device.start()
        fleet.wait_for(lambda: self.queued_heartbeats() == 0 and self.hub_max_seq() > 0, 60,
                       "caught up")
        time.sleep(8)  # the start's own exchanges (enrolment check, first poll) are over
        with self.hub_db() as db:
            count = lambda: db.execute(  # noqa: E731
                "SELECT COUNT(*) FROM telemetry_batches WHERE device_id = ?",
                (self.device.id,)).fetchone()[0]
            batches0, (up0, down0) = count(), self.proxy.counters()
            time.sleep(30)
            batches1, (up1, down1) = count(), self.proxy.counters()
        batches = batches1 - batches0
        self.assertGreater(batches, 10)
        per_beat = (up1 - up0 + down1 - down0) / batches
        self.results.append(
            f"{per_beat:.0f} bytes on the wire per heartbeat exchange (device->hub "
            f"{(up1 - up0) / batches:.0f}, hub->device {(down1 - down0) / batches:.0f}; TLS, "
            f"kept-alive connection, {batches} heartbeats); at the default 600 s interval: "
            f"{6 * per_beat / 1000:.1f} kB per hour before TLS handshakes")
        # SIGTERM waits out a parked long poll (up to --hub-wait, an existing
        # limit of the desired-state poll), so this agent is killed instead.
        self.device.expect_running = False
        self.device.kill()


if __name__ == "__main__":
    unittest.main(verbosity=2)
