#!/usr/bin/python3
"""Bad requests get a 4xx JSON {"error": ...} that says what is wrong, and the server keeps serving."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

INFER = "/v2/models/add_one/infer"
GOOD_X = [[1.0, 2.0, 3.0, 4.0]]
MAX_BODY = 100000
REQUEST_TIMEOUT_MS = 500


class BadInputTest(harness.ServerTestCase):
    CLASS_SERVER = dict(models=["add_one", "two_io"],
                        flags=["--http-max-body-bytes", str(MAX_BODY),
                               "--http-request-timeout-ms", str(REQUEST_TIMEOUT_MS)])

    def tearDown(self):
        self.assertStillServes()

    def assertStillServes(self):
        resp = self.server.infer_json("add_one", [("x", "FP32", [1, 4], GOOD_X)])
        self.assertStatus(resp, 200, "a good request after the bad one")
        self.assertClose(self.output(resp, "y")["data"], [3, 4, 5, 6])

    def infer_doc(self, doc, path=INFER):
        return self.server.post(path, json.dumps(doc).encode(),
                                headers={"Content-Type": "application/json"})

    def x(self, **overrides):
        tensor = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
        tensor.update(overrides)
        return {"inputs": [tensor]}

    def binary_request(self, header_doc, raw, header_len=None, path=INFER):
        header = json.dumps(header_doc).encode()
        return self.server.post(path, header + raw, headers={
            "Inference-Header-Content-Length": str(len(header) if header_len is None else header_len),
            "Content-Type": "application/octet-stream"})

    # Addressing ---------------------------------------------------------------
    def test_unknown_model(self):
        resp = self.infer_doc(self.x(), path="/v2/models/nope/infer")
        self.assertErrorJson(resp, 404, "nope")

    def test_unknown_model_metadata(self):
        self.assertErrorJson(self.server.get("/v2/models/nope"), 404, "nope")

    def test_unknown_version(self):
        resp = self.infer_doc(self.x(), path="/v2/models/add_one/versions/7/infer")
        self.assertErrorJson(resp, 404, "7")

    def test_non_numeric_version(self):
        resp = self.infer_doc(self.x(), path="/v2/models/add_one/versions/latest/infer")
        self.assertErrorJson(resp, (400, 404))

    def test_unknown_route(self):
        self.assertErrorJson(self.server.get("/v2/nothing/here"), 404)

    def test_unsupported_method(self):
        resp = self.server.request("DELETE", INFER)
        self.assertErrorJson(resp, (404, 405))
        resp = self.server.request("GET", INFER)
        self.assertErrorJson(resp, (404, 405))
        resp = self.server.request("PUT", "/v2/health/ready", body=b"{}")
        self.assertErrorJson(resp, (404, 405))

    # Tensor contents -------------------------------------------------------------
    def test_wrong_input_name(self):
        resp = self.infer_doc(self.x(name="z"))
        self.assertErrorJson(resp, 400, "z")

    def test_missing_input(self):
        doc = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
        resp = self.infer_doc(doc, path="/v2/models/two_io/infer")
        self.assertErrorJson(resp, 400, "b")

    def test_no_inputs(self):
        self.assertErrorJson(self.infer_doc({"inputs": []}), 400, ("inputs", "x"))
        self.assertErrorJson(self.infer_doc({}), 400, "inputs")

    def test_duplicate_input(self):
        doc = self.x()
        doc["inputs"].append(dict(doc["inputs"][0]))
        self.assertErrorJson(self.infer_doc(doc), 400, "x")

    def test_wrong_shape(self):
        resp = self.infer_doc(self.x(shape=[1, 5], data=[1, 2, 3, 4, 5]))
        self.assertErrorJson(resp, 400, "shape")
        resp = self.infer_doc(self.x(shape=[4], data=[1, 2, 3, 4]))
        self.assertErrorJson(resp, 400, "shape")
        resp = self.infer_doc(self.x(shape=[1, -4], data=[1, 2, 3, 4]))
        self.assertErrorJson(resp, 400)

    def test_batch_over_max_batch_size(self):
        rows = [[1, 2, 3, 4]] * 9  # default max_batch_size is 8
        resp = self.infer_doc(self.x(shape=[9, 4], data=rows))
        self.assertErrorJson(resp, 400, ("batch", "8"))

    def test_wrong_datatype(self):
        resp = self.infer_doc(self.x(datatype="INT32"))
        self.assertErrorJson(resp, 400, ("FP32", "datatype"))

    def test_invalid_datatype_name(self):
        resp = self.infer_doc(self.x(datatype="FP33"))
        self.assertErrorJson(resp, 400, "FP33")

    def test_wrong_element_count(self):
        resp = self.infer_doc(self.x(data=[1, 2, 3]))
        self.assertErrorJson(resp, 400)
        resp = self.infer_doc(self.x(data=[[1, 2], [3, 4, 5]]))
        self.assertErrorJson(resp, 400)

    def test_non_numeric_data(self):
        self.assertErrorJson(self.infer_doc(self.x(data=["a", "b", "c", "d"])), 400)
        self.assertErrorJson(self.infer_doc(self.x(data=[1, 2, None, 4])), 400)
        self.assertErrorJson(self.infer_doc(self.x(data={"not": "a list"})), 400)

    def test_int64_out_of_range(self):
        doc = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]},
                          {"name": "b", "datatype": "INT64", "shape": [1, 3],
                           "data": [1, 2, 2**70]}]}
        self.assertErrorJson(self.infer_doc(doc, path="/v2/models/two_io/infer"), 400)

    def test_bytes_data(self):
        resp = self.infer_doc(self.x(datatype="BYTES", data=["abcd", "e", "f", "g"]))
        self.assertErrorJson(resp, 400)

    def test_unknown_requested_output(self):
        doc = self.x()
        doc["outputs"] = [{"name": "nope"}]
        self.assertErrorJson(self.infer_doc(doc), 400, "nope")

    # Body framing ----------------------------------------------------------------
    def test_malformed_json(self):
        resp = self.server.post(INFER, b'{"inputs": [{"name": "x",', headers={"Content-Type": "application/json"})
        self.assertErrorJson(resp, 400, "json")

    def test_json_not_an_object(self):
        self.assertErrorJson(self.infer_doc([1, 2, 3]), 400)
        self.assertErrorJson(self.infer_doc("inputs"), 400)
        self.assertErrorJson(self.infer_doc({"inputs": {"name": "x"}}), 400)

    def test_post_without_body(self):
        resp = self.server.post(INFER, b"")
        self.assertErrorJson(resp, 400)

    def test_binary_data_size_beyond_body(self):
        header = self.x()
        del header["inputs"][0]["data"]
        header["inputs"][0]["parameters"] = {"binary_data_size": 16}
        resp = self.binary_request(header, harness.pack("FP32", [1, 2]))  # 8 of 16 bytes
        self.assertErrorJson(resp, 400, ("binary", "size", "x"))

    def test_binary_data_size_not_matching_shape(self):
        header = self.x()
        del header["inputs"][0]["data"]
        header["inputs"][0]["parameters"] = {"binary_data_size": 12}
        resp = self.binary_request(header, harness.pack("FP32", [1, 2, 3]))
        self.assertErrorJson(resp, 400)

    def test_binary_trailing_bytes(self):
        header = self.x()
        del header["inputs"][0]["data"]
        header["inputs"][0]["parameters"] = {"binary_data_size": 16}
        resp = self.binary_request(header, harness.pack("FP32", [1, 2, 3, 4, 5]))
        self.assertErrorJson(resp, 400)

    def test_header_length_beyond_body(self):
        header = self.x()
        resp = self.binary_request(header, b"", header_len=len(json.dumps(header)) + 50)
        self.assertErrorJson(resp, 400, ("inference-header-content-length", "header"))

    def test_header_length_not_a_number(self):
        resp = self.server.post(INFER, json.dumps(self.x()).encode(),
                                headers={"Inference-Header-Content-Length": "ten"})
        self.assertErrorJson(resp, 400)

    def test_oversized_body_gets_413_before_it_is_read(self):
        size = MAX_BODY * 2
        with self.server.raw_socket() as sock:
            sock.sendall((f"POST {INFER} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {size}\r\n\r\n").encode())
            # Send nothing of the body: the answer must come from the headers alone.
            resp = harness.read_http_response(sock, timeout=5)
        self.assertIsNotNone(resp, "closed without a 413")
        self.assertErrorJson(resp, 413)

    def test_oversized_body_sent_whole(self):
        # A client that sends everything anyway still gets its 413 (or sees the close).
        body = b"[" + b"1," * (MAX_BODY // 2 + 10) + b"1]"
        try:
            resp = self.server.post(INFER, body, headers={"Content-Type": "application/json"})
        except (ConnectionResetError, BrokenPipeError):
            return
        self.assertErrorJson(resp, 413)

    def test_body_shorter_than_content_length(self):
        stalled = self.server.raw_socket()
        try:
            body = json.dumps(self.x()).encode()
            start = time.monotonic()
            stalled.sendall((f"POST {INFER} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body) + 100}\r\n\r\n").encode() + body)
            # Others are served while that connection waits for bytes that never come.
            self.assertStillServes()
            outcome, resp = harness.wait_closed_or_response(stalled, 5)
            elapsed = time.monotonic() - start
            self.assertNotEqual(outcome, "open", "server still waiting after 5 s "
                                f"(--http-request-timeout-ms {REQUEST_TIMEOUT_MS})")
            if outcome == "response":
                self.assertStatus(resp, (400, 408))
            self.assertLess(elapsed, 2.0, f"took {elapsed:.2f} s to give up on the request")
        finally:
            stalled.close()

    def test_slow_client_is_disconnected(self):
        request = (f"POST {INFER} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                   f"X-Padding: {'p' * 40}\r\nContent-Length: 2\r\n\r\n{{}}").encode()
        byte_interval = 0.1  # the whole request would take ~10 s, the limit is 0.5 s
        sock = self.server.raw_socket()
        start = time.monotonic()
        outcome, sent = "open", 0
        try:
            for i in range(len(request)):
                try:
                    sock.send(request[i:i + 1])
                    sent += 1
                except (BrokenPipeError, ConnectionResetError):
                    outcome = "closed"
                    break
                outcome, resp = harness.wait_closed_or_response(sock, byte_interval)
                if outcome != "open":
                    if outcome == "response":
                        self.assertStatus(resp, 408)
                    break
                if time.monotonic() - start > 4:
                    break
        finally:
            sock.close()
        elapsed = time.monotonic() - start
        self.assertNotEqual(outcome, "open",
                            f"slow client still connected after {elapsed:.1f} s ({sent} bytes sent)")
        self.assertLess(elapsed, 2.5, f"slow client disconnected only after {elapsed:.2f} s")
        self.assertLess(sent, len(request), "the whole request got through")

    def test_garbage_request_line(self):
        resp = self.server.raw_request(b"HELLO\r\n\r\n", timeout=5)
        if resp is not None:
            self.assertStatus(resp, 400)

    def test_many_bad_requests_in_a_row_on_one_connection(self):
        conn = self.server.connection()
        try:
            for i in range(20):
                resp = self.server.post(INFER, b"{not json", conn=conn,
                                        headers={"Content-Type": "application/json"})
                self.assertErrorJson(resp, 400)
                if conn.sock is None:
                    conn.connect()  # the server may close after an error; that is allowed
            resp = self.server.infer_json("add_one", [("x", "FP32", [1, 4], GOOD_X)], conn=conn)
            self.assertStatus(resp, 200)
        finally:
            conn.close()


if __name__ == "__main__":
    harness.main()
