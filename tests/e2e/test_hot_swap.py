#!/usr/bin/python3
"""Hot swap under load: no request fails while the model's version changes 20 times.

The repository's add_one starts with versions 1 (y = x + 1) and 2 (y = x + 2).
Each swap writes version k (a copy of v1 when k is odd, of v2 when even) and
asks the server to load add_one (explicit mode, version_policy latest), so
every answer's data tells which version computed it, and it must be the
version the answer names in model_version.
"""

import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CLIENTS = 4
SWAPS = 20
MIN_REQUESTS = 5000
REQUESTS_PER_SWAP = 240  # swaps are spread over the load, not bunched at the start
TAIL_REQUESTS = 200      # served by the last version after the last swap
DEADLINE_S = 150


def delta(version):
    return 1 if version % 2 else 2


class HotSwapTest(harness.ServerTestCase):
    def test_swap_20_times_under_load(self):
        server = self.start_server(models={"add_one": [1, 2]},
                                   flags=["--model-control-mode", "explicit", "--load-model", "add_one"])
        lock = threading.Lock()
        stats = {"requests": 0, "failures": 0, "after_last_swap": 0}
        failures = []
        versions_seen = set()
        swaps_done = threading.Event()
        stop = threading.Event()
        swap_errors = []

        def fail(what):
            with lock:
                stats["failures"] += 1
                if len(failures) < 10:
                    failures.append(what)

        def client(seed):
            rng = random.Random(seed)
            conn = server.connection(timeout=30)
            last_version = 0
            try:
                while not stop.is_set():
                    row = [float(rng.randrange(-1000, 1000)) / 4 for _ in range(4)]
                    try:
                        resp = server.infer_json("add_one", [("x", "FP32", [1, 4], [row])], conn=conn)
                    except Exception as e:  # a dropped connection is a failed request
                        fail(f"request raised {type(e).__name__}: {e}")
                        conn.close()
                        conn = server.connection(timeout=30)
                        continue
                    with lock:
                        stats["requests"] += 1
                        if swaps_done.is_set():
                            stats["after_last_swap"] += 1
                    if resp.status != 200:
                        fail(f"HTTP {resp.status}: {resp.body[:300]!r}")
                        continue
                    try:
                        version = int(resp.doc["model_version"])
                        data = resp.doc["outputs"][0]["data"]
                    except (KeyError, IndexError, ValueError, TypeError) as e:
                        fail(f"bad response {resp.doc}: {e}")
                        continue
                    want = [v + delta(version) for v in row]
                    if any(abs(g - w) > 1e-4 for g, w in zip(data, want)) or len(data) != 4:
                        fail(f"version {version} answered {data} for {row} (want {want})")
                    if version < last_version:
                        fail(f"version went back from {last_version} to {version} on one client")
                    last_version = max(last_version, version)
                    with lock:
                        versions_seen.add(version)
            finally:
                conn.close()

        def swapper():
            try:
                for i, version in enumerate(range(3, 3 + SWAPS)):
                    while not stop.is_set():
                        with lock:
                            if stats["requests"] >= (i + 1) * REQUESTS_PER_SWAP:
                                break
                        time.sleep(0.005)
                    if stop.is_set():
                        return
                    server.add_version("add_one", version, "add_one", 1 if version % 2 else 2)
                    resp = server.load("add_one")
                    if resp.status != 200:
                        swap_errors.append(f"load for version {version}: {resp}")
                        return
                swaps_done.set()
            except Exception as e:
                swap_errors.append(f"swapper raised {type(e).__name__}: {e}")

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        swap_thread = threading.Thread(target=swapper, daemon=True)
        start = time.monotonic()
        for t in threads:
            t.start()
        swap_thread.start()
        while time.monotonic() - start < DEADLINE_S and not swap_errors:
            with lock:
                done = (swaps_done.is_set() and stats["requests"] >= MIN_REQUESTS
                        and stats["after_last_swap"] >= TAIL_REQUESTS)
            if done:
                break
            time.sleep(0.05)
        stop.set()
        swap_thread.join(60)
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - start

        swaps = SWAPS if swaps_done.is_set() else None
        print(f"\nhot_swap: requests={stats['requests']} swaps={swaps} failures={stats['failures']} "
              f"versions_seen={sorted(versions_seen)} elapsed={elapsed:.1f}s "
              f"rate={stats['requests'] / elapsed:.0f}/s", flush=True)
        self.assertEqual(swap_errors, [])
        self.assertEqual(stats["failures"], 0, "failed requests, first ones:\n" + "\n".join(failures))
        self.assertTrue(swaps_done.is_set(), f"only part of the {SWAPS} swaps done in {DEADLINE_S} s")
        self.assertGreaterEqual(stats["requests"], MIN_REQUESTS)
        last = 2 + SWAPS
        self.assertIn(last, versions_seen)
        # Swaps were spread over the load: most intermediate versions answered something.
        self.assertGreaterEqual(len(versions_seen & set(range(3, last + 1))), SWAPS // 2,
                                f"versions seen {sorted(versions_seen)}")
        resp = server.infer_json("add_one", [("x", "FP32", [1, 4], [[0, 0, 0, 0]])])
        self.assertEqual(resp.doc["model_version"], str(last))
        self.assertClose(self.output(resp, "y")["data"], [delta(last)] * 4)
        index = server.index_entries("add_one")
        self.assertEqual([str(e.get("version")) for e in index if e["state"] == "READY"], [str(last)],
                         f"only the newest version stays loaded with version_policy latest: {index}")


if __name__ == "__main__":
    harness.main()
