#!/usr/bin/python3
"""Writes the seed corpus of grpc_codec_fuzz: serialized ModelInferRequests.

  protoc -I proto --python_out=DIR proto/grpc_service.proto
  PYTHONPATH=DIR /usr/bin/python3 src/serve/fuzz_corpus/make_grpc_seeds.py
"""
import os
import struct

import grpc_service_pb2 as pb

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpc_codec")


def write(name, req):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(req.SerializeToString())


def tensor(req, name, datatype, shape):
    t = req.inputs.add()
    t.name, t.datatype = name, datatype
    t.shape.extend(shape)
    return t


r = pb.ModelInferRequest(model_name="add_one", id="1")
tensor(r, "x", "FP32", [1, 4])
r.raw_input_contents.append(struct.pack("<4f", 1, 2, 3, 4))
r.outputs.add().name = "y"
write("raw_fp32", r)

r = pb.ModelInferRequest(model_name="two_io")
tensor(r, "a", "FP32", [1, 3]).contents.fp32_contents.extend([1, 2, 3])
tensor(r, "b", "INT64", [1, 3]).contents.int64_contents.extend([1, -2, 3])
write("typed_fp32_int64", r)

r = pb.ModelInferRequest(model_name="m")
tensor(r, "a", "INT8", [2]).contents.int_contents.extend([-128, 127])
tensor(r, "b", "UINT16", [2]).contents.uint_contents.extend([0, 65535])
tensor(r, "c", "BOOL", [2]).contents.bool_contents.extend([True, False])
write("typed_narrow", r)

r = pb.ModelInferRequest(model_name="m")
tensor(r, "h", "FP16", [2])
r.raw_input_contents.append(struct.pack("<2H", 0x3C00, 0x4000))
write("raw_fp16", r)
