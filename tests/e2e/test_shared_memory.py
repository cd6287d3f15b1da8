#!/usr/bin/python3
"""System shared memory extension: tensors in a POSIX shared memory region, not on the socket."""

import os
import struct
import sys
from multiprocessing import shared_memory

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class SharedMemoryTest(harness.ServerTestCase):
    CLASS_SERVER = dict(models=["add_one"])

    def setUp(self):
        super().setUp()
        self.shm = shared_memory.SharedMemory(create=True, size=4096)
        self.addCleanup(self.shm.unlink)
        self.addCleanup(self.shm.close)
        self.server.post("/v2/systemsharedmemory/unregister")

    def register(self, name, byte_size=4096, offset=0, key=None):
        return self.server.post(f"/v2/systemsharedmemory/region/{name}/register",
                                {"key": key or "/" + self.shm.name, "offset": offset,
                                 "byte_size": byte_size})

    def test_inputs_and_outputs_travel_through_shared_memory(self):
        self.assertIn("system_shared_memory", self.server.get("/v2").json()["extensions"])
        self.assertEqual(self.register("io").status, 200)
        self.shm.buf[64:80] = struct.pack("<4f", 1, 2, 3, 4)
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                            "parameters": {"shared_memory_region": "io", "shared_memory_offset": 64,
                                           "shared_memory_byte_size": 16}}],
                "outputs": [{"name": "y", "parameters": {"shared_memory_region": "io",
                                                         "shared_memory_offset": 1024,
                                                         "shared_memory_byte_size": 16}}]}
        resp = self.server.post("/v2/models/add_one/infer", body)
        self.assertEqual(resp.status, 200, resp.body)
        out = resp.json()["outputs"][0]
        self.assertNotIn("data", out)
        self.assertEqual(out["parameters"]["shared_memory_region"], "io")
        self.assertEqual(struct.unpack("<4f", bytes(self.shm.buf[1024:1040])), (3, 4, 5, 6))

        status = self.server.get("/v2/systemsharedmemory/region/io/status").json()
        self.assertEqual(status[0]["key"], "/" + self.shm.name)
        self.assertEqual(self.server.post("/v2/systemsharedmemory/region/io/unregister").status, 200)
        resp = self.server.post("/v2/models/add_one/infer", body)
        self.assertEqual(resp.status, 400)
        self.assertIn("no shared memory region 'io'", resp.json()["error"])

    def test_bad_registrations_are_refused_clearly(self):
        resp = self.register("r", key="/outpost-no-such-object")
        self.assertEqual(resp.status, 404)
        self.assertIn("no shared memory object", resp.json()["error"])
        resp = self.register("r", byte_size=8192)
        self.assertEqual(resp.status, 400)
        self.assertIn("does not fit", resp.json()["error"])
        self.assertEqual(self.register("r").status, 200)
        self.assertEqual(self.register("r").status, 409)
        resp = self.server.post("/v2/systemsharedmemory/region/r/register", {"key": 3})
        self.assertEqual(resp.status, 400)

    def test_slices_are_bounds_checked(self):
        self.assertEqual(self.register("small", byte_size=32, offset=4000).status, 200)
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                            "parameters": {"shared_memory_region": "small",
                                           "shared_memory_offset": 24,
                                           "shared_memory_byte_size": 16}}]}
        resp = self.server.post("/v2/models/add_one/infer", body)
        self.assertEqual(resp.status, 400)
        self.assertIn("past its end", resp.json()["error"])
        # The server keeps serving.
        self.assertEqual(self.server.infer_json("add_one", [("x", "FP32", [1, 4], [0, 0, 0, 0])]).status,
                         200)


if __name__ == "__main__":
    harness.main()
