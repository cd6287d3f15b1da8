#!/usr/bin/python3
"""Loading and unloading a model 200 times does not leak (the heavy model: 5 MB of weights)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CYCLES = 200
TOLERANCE = 0.10
MB = 1024 * 1024
CHECKPOINTS = (1, 10, 50, 100, 150, 200)


class MemoryTest(harness.ServerTestCase):
    def test_load_unload_200_times(self):
        server = self.start_server(models=["heavy"], flags=["--model-control-mode", "explicit"])
        row = [[0.01 * (i % 7) for i in range(256)]]
        rss_first = None
        trace = []  # a leak grows linearly; allocator caching levels off
        start = time.monotonic()
        for cycle in range(1, CYCLES + 1):
            resp = server.load("heavy")
            self.assertStatus(resp, 200, f"load #{cycle}")
            # Run it once so the session's buffers are really allocated.
            resp = server.infer_binary("heavy", [("input", "FP32", [1, 256], row)])
            self.assertStatus(resp, 200, f"inference after load #{cycle}")
            self.assertEqual(len(self.output(resp, "output")["data"]), 256)
            if cycle in CHECKPOINTS:
                trace.append(f"{cycle}:{server.rss_bytes() / MB:.1f}")
            if cycle == 1:
                rss_first = server.rss_bytes()
            if cycle == CYCLES:
                rss_last = server.rss_bytes()
                break
            self.assertStatus(server.unload("heavy"), 200, f"unload #{cycle}")
        elapsed = time.monotonic() - start
        growth = (rss_last - rss_first) / rss_first
        print(f"\nmemory: VmRSS after load 1 = {rss_first / MB:.1f} MiB, after load {CYCLES} = "
              f"{rss_last / MB:.1f} MiB, growth {growth * 100:+.1f}% ({CYCLES} cycles in {elapsed:.1f} s; "
              f"MiB at load n: {' '.join(trace)})",
              flush=True)
        self.assertLessEqual(growth, TOLERANCE,
                             f"RSS grew {growth * 100:.1f}% over {CYCLES} load/unload cycles")


if __name__ == "__main__":
    harness.main()
