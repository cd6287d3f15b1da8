#!/usr/bin/python3
"""Backpressure: a full queue answers 503 at once (and says so) instead of letting requests pile up."""

import json
import os
import re
import select
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CONCURRENT = 40
ROWS = 8  # the default max_batch_size: each request is as slow as one can be
QUEUED = 300


def request_bytes(rows):
    """One raw HTTP request for heavy: `rows` x 256 FP32 sent with the binary extension."""
    raw = harness.pack("FP32", [((i * 37) % 101) / 101.0 for i in range(rows * 256)])
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 256],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    body = header + raw
    return (f"POST /v2/models/heavy/infer HTTP/1.1\r\nHost: localhost\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


class BackpressureTest(harness.ServerTestCase):
    def burst(self, server):
        """Sends CONCURRENT requests on as many connections, as close together as possible."""
        request = request_bytes(ROWS)
        socks = [server.raw_socket(timeout=20) for _ in range(CONCURRENT)]
        try:
            start = time.monotonic()
            for sock in socks:
                sock.sendall(request)
            results = []
            pending = list(socks)
            deadline = start + 20
            while pending and time.monotonic() < deadline:
                readable, _, _ = select.select(pending, [], [], deadline - time.monotonic())
                for sock in readable:
                    arrived = time.monotonic() - start
                    resp = harness.read_http_response(sock, timeout=10)
                    self.assertIsNotNone(resp, "connection closed without an answer")
                    results.append((resp, arrived))
                    pending.remove(sock)
            self.assertEqual(pending, [], f"{len(pending)} requests unanswered after 20 s")
            return results
        finally:
            for sock in socks:
                sock.close()

    def test_full_queue_rejects_quickly(self):
        server = self.start_server(
            models=["heavy"],
            configs={"heavy": "max_queue_size: 2\ninstance_count: 1\nintra_op_threads: 1\n"})
        ok = rejected = 0
        rounds = 0
        burst_times, reject_times = [], []
        while rounds < 3 and rejected == 0:  # a very fast machine may need more than one burst
            rounds += 1
            start = time.monotonic()
            results = self.burst(server)
            burst_times.append(time.monotonic() - start)
            for resp, arrived in results:
                if resp.status == 200:
                    ok += 1
                    out = harness.parse_infer_body(resp.headers, resp.body)["outputs"][0]
                    self.assertEqual(out["shape"], [ROWS, 256])
                elif resp.status == 503:
                    rejected += 1
                    reject_times.append(arrived)
                    self.assertErrorJson(resp, 503, "queue")
                else:
                    self.fail(f"unexpected answer under load: {resp}")
        print(f"\nbackpressure: {rounds} burst(s) of {CONCURRENT}: {ok} served, {rejected} rejected (503), "
              f"burst times {', '.join(f'{t:.2f}s' for t in burst_times)}, "
              f"last 503 after {max(reject_times, default=0):.3f}s", flush=True)
        self.assertGreater(rejected, 0, "a queue of 2 never filled under 40 concurrent requests")
        self.assertGreater(ok, 0, "nothing was served")
        self.assertLess(max(burst_times), 15, "the burst took too long: requests piled up")
        self.assertLess(max(reject_times), 2.0, f"503s should not wait for the queue: {reject_times}")

        samples, _ = harness.parse_metrics(server.metrics())
        found = harness.find_samples(samples, "outpost_inference_queue_rejections_total", model="heavy")
        self.assertEqual(sum(v for _, v in found), rejected,
                         f"outpost_inference_queue_rejections_total {found} vs {rejected} 503s")
        # And it recovers once the burst is over.
        resp = server.infer_binary("heavy", [("input", "FP32", [1, 256], [0.0] * 256)])
        self.assertStatus(resp, 200)


class ShutdownTest(harness.ServerTestCase):
    def test_sigterm_answers_queued_requests_first(self):
        server = harness.Server(models=["heavy"], configs={
            "heavy": f"instance_count: 1\nintra_op_threads: 1\nmax_queue_size: {QUEUED * 2}\n"})
        self.addCleanup(server.cleanup)
        answers = {}  # socket index -> (status or error, monotonic arrival time)
        try:
            server.start()
            request = request_bytes(ROWS)
            socks = [server.raw_socket(timeout=20) for _ in range(QUEUED)]
            for sock in socks:
                sock.sendall(request)
            # Read and queued within a few ms; computing them all takes far longer.
            signalled = []
            timer = threading.Timer(0.01, lambda: (server.proc.send_signal(signal.SIGTERM),
                                                   signalled.append(time.monotonic())))
            timer.start()
            start = time.monotonic()
            pending = dict(enumerate(socks))
            while pending and time.monotonic() - start < 15:
                readable, _, _ = select.select(list(pending.values()), [], [], 1)
                for sock in readable:
                    index = socks.index(sock)
                    arrived = time.monotonic()
                    try:
                        resp = harness.read_http_response(sock, timeout=5)
                        answers[index] = (resp.status if resp else "closed without an answer", arrived)
                    except (OSError, AssertionError) as e:
                        answers[index] = (f"{type(e).__name__}: {e}", arrived)
                    del pending[index]
            timer.join()
            for index in pending:
                answers[index] = ("no answer within 15 s", None)
            for sock in socks:
                sock.close()
            proc, server.proc = server.proc, None
            rc = proc.wait(10)
            server._log.close()
        except BaseException:
            server.kill()
            server.print_log()
            raise
        statuses = [answers[i][0] for i in range(QUEUED)]
        after_signal = [t - signalled[0] for status, t in answers.values()
                        if status == 200 and t is not None and t > signalled[0]]
        others = [s for s in statuses if s not in (200, 503)]
        print(f"\nshutdown: of {QUEUED} requests sent before SIGTERM, {statuses.count(200)} answered 200 "
              f"({len(after_signal)} of them after the signal, the last after "
              f"{max(after_signal, default=0):.3f} s), {statuses.count(503)} 503, others {others}", flush=True)
        if others or rc != 0:
            server.print_log()
        self.assertEqual(rc, 0, "exit code after SIGTERM")
        self.assertEqual(others, [], "every request that arrived before SIGTERM gets an answer (200, or 503)")
        self.assertGreater(len(after_signal), 0, "no request was still queued at SIGTERM: the test proves nothing")

    def test_exit_timeout_abandons_what_is_still_queued(self):
        """Past --exit-timeout-secs (0 here) the connections close and the
        queued requests are answered 'shutting down' without being computed:
        the process exits at once, cleanly, and says how many it abandoned."""
        rows = 64  # a few ms of compute each: far more queued than computed
        server = harness.Server(models=["heavy"], flags=["--exit-timeout-secs", "0"], configs={
            "heavy": f"max_batch_size: {rows}\ninstance_count: 1\nintra_op_threads: 1\n"
                     f"max_queue_size: {QUEUED * 2}\n"})
        self.addCleanup(server.cleanup)
        try:
            server.start()
            request = request_bytes(rows)
            socks = [server.raw_socket(timeout=20) for _ in range(QUEUED)]
            for sock in socks:
                sock.sendall(request)
            time.sleep(0.05)  # read and queued; only a few computed yet
            server.proc.send_signal(signal.SIGTERM)
            start = time.monotonic()
            proc, server.proc = server.proc, None
            rc = proc.wait(30)
            exit_s = time.monotonic() - start
            server._log.close()
            answered = 0
            for sock in socks:
                try:
                    resp = harness.read_http_response(sock, timeout=5)
                    answered += 1 if resp and resp.status == 200 else 0
                except (OSError, AssertionError):
                    pass
                sock.close()
        except BaseException:
            server.kill()
            server.print_log()
            raise
        log = server.log_text()
        print(f"\nexit timeout 0: exited {exit_s:.2f} s after SIGTERM, {answered} of {QUEUED} "
              f"answered 200", flush=True)
        self.assertEqual(rc, 0, "exit code after SIGTERM")
        match = re.search(r"--exit-timeout-secs \(0 s\) passed: (\d+) queued requests abandoned", log)
        self.assertIsNotNone(match, log[-3000:])
        self.assertGreater(int(match.group(1)), 0)
        self.assertLess(answered, QUEUED)


if __name__ == "__main__":
    harness.main()
