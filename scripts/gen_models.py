#!/usr/bin/python3
"""Generates the ONNX models Outpost's tests, benchmarks and demo use.

Nothing is downloaded: small graphs are built with onnx.helper, and the
benchmark architectures are exported from Debian's torchvision with random
weights (a fixed seed, so every run makes the same files).

  gen_models.py --out DIR               test models (seconds)
  gen_models.py --out DIR --torchvision mobilenet_v2 resnet50

Layout written (a model repository):
  DIR/add_one/1/model.onnx      y = x + 1      x: FP32[-1, 4]
  DIR/add_one/2/model.onnx      y = x + 2      (the answer tells the version)
  DIR/two_io/1/model.onnx       a: FP32[-1,3], b: INT64[-1,3] -> twice_a, b_plus_one
  DIR/tiny/1/model.onnx         MLP 64 -> 128 -> 10, FP32[-1, 64]
  DIR/heavy/1/model.onnx        20 x MatMul 256x256, FP32[-1, 256] (slow on purpose)
  DIR/fixed/1/model.onnx        y = x * 3      x: FP32[2, 2] (no batch dimension)
  DIR/add_one_slow/1/model.onnx y = x + 2, plus milliseconds of MatMuls whose result is
                                multiplied by 0 (a release that passes its
                                self-tests but is much slower: rollout gates)
  DIR/floor_224/1/model.onnx    the first 1000 values of an image-sized input, no
                                compute: FP32[-1, 3, 224, 224] -> FP32[-1, 1000] (the
                                benchmark's floor: what moving mobilenet's tensors costs)
  DIR/color_classifier/1/model.onnx  image FP32[-1,3,32,32] (RGB, 0..1) -> probs FP32[-1,3]:
                                softmax(20 x mean of each channel), so the top class
                                is the image's dominant colour; labels.txt red/green/blue
  DIR/box_detector/1/model.onnx images FP32[-1,3,64,64] -> output0 FP32[-1,4,7], YOLOv5
                                rows (cx,cy,w,h,obj,person,car) in input pixels: four fixed
                                boxes whose objectness is weight x max over pixels of
                                relu(R - G) (1 for a red frame, 0 for grey, black, blue, green);
                                labels.txt person/car; config.yaml preprocess: letterbox
                                (pipelines that name it need no pre-processing of their own)
  DIR/color_classifier_fp16/1/model.onnx, DIR/box_detector_fp16/1/model.onnx
                                the same graphs with FP16 input and output (a Cast at
                                each end): pre-processing writes FP16, post-processing reads it
  DIR/<arch>/1/model.onnx       torchvision architecture, input FP32[-1, 3, 224, 224]
"""

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def save(model, out_dir, name, version):
    path = os.path.join(out_dir, name, str(version))
    os.makedirs(path, exist_ok=True)
    onnx.checker.check_model(model)
    tmp = os.path.join(path, "model.onnx.tmp")
    onnx.save(model, tmp)
    os.replace(tmp, os.path.join(path, "model.onnx"))


def make_model(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def add_const(value):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    c = numpy_helper.from_array(np.array([value], dtype=np.float32), "c")
    node = helper.make_node("Add", ["x", "c"], ["y"])
    return make_model(helper.make_graph([node], "add_const", [x], [y], [c]))


def two_io():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 3])
    ta = helper.make_tensor_value_info("twice_a", TensorProto.FLOAT, ["batch", 3])
    bp = helper.make_tensor_value_info("b_plus_one", TensorProto.INT64, ["batch", 3])
    two = numpy_helper.from_array(np.array([2.0], dtype=np.float32), "two")
    one = numpy_helper.from_array(np.array([1], dtype=np.int64), "one")
    nodes = [helper.make_node("Mul", ["a", "two"], ["twice_a"]),
             helper.make_node("Add", ["b", "one"], ["b_plus_one"])]
    return make_model(helper.make_graph(nodes, "two_io", [a, b], [ta, bp], [two, one]))


def floor_224():
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1000])
    init = [numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in
            (("shape", [0, 3 * 224 * 224]), ("starts", [0]), ("ends", [1000]), ("axes", [1]))]
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"]),
             helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["output"])]
    return make_model(helper.make_graph(nodes, "floor_224", [x], [y], init))


def mlp(rng, dims, name):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", dims[0]])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", dims[-1]])
    nodes, inits, prev = [], [], "input"
    for i in range(len(dims) - 1):
        w = numpy_helper.from_array(
            (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32), f"w{i}")
        b = numpy_helper.from_array(np.zeros(dims[i + 1], dtype=np.float32), f"b{i}")
        inits += [w, b]
        mm, add = f"mm{i}", f"add{i}"
        nodes.append(helper.make_node("MatMul", [prev, w.name], [mm]))
        last = i == len(dims) - 2
        nodes.append(helper.make_node("Add", [mm, b.name], ["output" if last else add]))
        if not last:
            nodes.append(helper.make_node("Relu", [add], [f"relu{i}"]))
            prev = f"relu{i}"
    return make_model(helper.make_graph(nodes, name, [x], [out], inits))


def fixed():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    c = numpy_helper.from_array(np.array([3.0], dtype=np.float32), "c")
    return make_model(helper.make_graph([helper.make_node("Mul", ["x", "c"], ["y"])],
                                        "fixed", [x], [y], [c]))


def add_slow(rng, value, layers=200):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    # One weight shared by every MatMul: milliseconds of compute, a small file.
    w = numpy_helper.from_array((rng.standard_normal((256, 256)) / 16.0).astype(np.float32), "w")
    inits = [numpy_helper.from_array(np.array([value], dtype=np.float32), "c"),
             numpy_helper.from_array(np.array([1, 64], dtype=np.int64), "repeats"),
             numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero"), w]
    nodes = [helper.make_node("Tile", ["x", "repeats"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"m{i}"]))
        # tanh keeps every step bounded, so the dead branch stays finite and
        # 0 * it is exactly 0.
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes += [helper.make_node("ReduceMean", [f"h{layers}"], ["s"], axes=[1], keepdims=1),
              helper.make_node("Mul", ["s", "zero"], ["dead"]),
              helper.make_node("Add", ["x", "c"], ["sum"]),
              helper.make_node("Add", ["sum", "dead"], ["y"])]
    return make_model(helper.make_graph(nodes, "add_slow", [x], [y], inits))


def write_text(out_dir, name, filename, text):
    path = os.path.join(out_dir, name, filename)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def color_classifier():
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])
    gain = numpy_helper.from_array(np.array([20.0], dtype=np.float32), "gain")
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["mean"]),
             helper.make_node("Flatten", ["mean"], ["flat"], axis=1),
             helper.make_node("Mul", ["flat", "gain"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    return make_model(helper.make_graph(nodes, "color_classifier", [x], [y], [gain]))


# Boxes of box_detector in its 64x64 input: (cx, cy, w, h), objectness weight,
# class scores. Box 1 overlaps box 0 (same class: NMS drops it), box 2 sits
# on box 1 with the other class (class-wise NMS keeps it), box 3 stays under
# any sensible confidence threshold.
DETECTOR_BOXES = [((20, 20, 16, 16), 0.9, (1, 0)),
                  ((21, 21, 16, 16), 0.8, (1, 0)),
                  ((21, 21, 16, 16), 0.85, (0, 1)),
                  ((48, 48, 8, 8), 0.1, (1, 0))]


def box_detector():
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4, 7])
    boxes = np.array([[b for b in box] for box, _, _ in DETECTOR_BOXES], dtype=np.float32)[None]
    weights = np.array([[w] for _, w, _ in DETECTOR_BOXES], dtype=np.float32)[None]
    classes = np.array([c for _, _, c in DETECTOR_BOXES], dtype=np.float32)[None]
    inits = [numpy_helper.from_array(boxes, "boxes"),
             numpy_helper.from_array(weights, "weights"),
             numpy_helper.from_array(classes, "classes"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "c0"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "c1"),
             numpy_helper.from_array(np.array([2], dtype=np.int64), "c2"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
             numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "shape_n11"),
             numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero")]
    nodes = [helper.make_node("Slice", ["images", "c0", "c1", "axis1"], ["red"]),
             helper.make_node("Slice", ["images", "c1", "c2", "axis1"], ["green"]),
             helper.make_node("Sub", ["red", "green"], ["redness"]),
             helper.make_node("Relu", ["redness"], ["redness_pos"]),
             helper.make_node("GlobalMaxPool", ["redness_pos"], ["peak"]),
             helper.make_node("Reshape", ["peak", "shape_n11"], ["peak_n11"]),
             helper.make_node("Mul", ["peak_n11", "weights"], ["objectness"]),
             # Fixed boxes and class scores broadcast to the batch: + 0 x peak.
             helper.make_node("Mul", ["peak_n11", "zero"], ["zeros"]),
             helper.make_node("Add", ["boxes", "zeros"], ["boxes_b"]),
             helper.make_node("Add", ["classes", "zeros"], ["classes_b"]),
             helper.make_node("Concat", ["boxes_b", "objectness", "classes_b"], ["output0"], axis=2)]
    return make_model(helper.make_graph(nodes, "box_detector", [x], [y], inits))


def fp16_io(model):
    """`model` with its one input and one output in FP16: Cast nodes at both ends."""
    g = model.graph
    inp, out = g.input[0], g.output[0]
    inner_in, inner_out = inp.name + "_fp32", out.name + "_fp32"
    for node in g.node:
        node.input[:] = [inner_in if n == inp.name else n for n in node.input]
        node.output[:] = [inner_out if n == out.name else n for n in node.output]
    nodes = [helper.make_node("Cast", [inp.name], [inner_in], to=TensorProto.FLOAT)] + \
        list(g.node) + [helper.make_node("Cast", [inner_out], [out.name], to=TensorProto.FLOAT16)]
    inp.type.tensor_type.elem_type = TensorProto.FLOAT16
    out.type.tensor_type.elem_type = TensorProto.FLOAT16
    graph = helper.make_graph(nodes, g.name + "_fp16", [inp], [out], list(g.initializer))
    return make_model(graph)


def export_torchvision(arch, out_dir):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    dummy = torch.randn(1, 3, 224, 224)
    path = os.path.join(out_dir, arch, "1")
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, "model.onnx.tmp")
    torch.onnx.export(model, dummy, tmp, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      opset_version=OPSET, do_constant_folding=True)
    os.replace(tmp, os.path.join(path, "model.onnx"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--torchvision", nargs="*", default=[],
                   help="torchvision architectures to export (random weights)")
    p.add_argument("--only-torchvision", action="store_true")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.only_torchvision:
        rng = np.random.default_rng(0)
        save(add_const(1.0), args.out, "add_one", 1)
        save(add_const(2.0), args.out, "add_one", 2)
        save(two_io(), args.out, "two_io", 1)
        save(mlp(rng, [64, 128, 10], "tiny"), args.out, "tiny", 1)
        save(mlp(rng, [256] * 21, "heavy"), args.out, "heavy", 1)
        save(fixed(), args.out, "fixed", 1)
        save(add_slow(rng, 2.0), args.out, "add_one_slow", 1)
        save(floor_224(), args.out, "floor_224", 1)
        save(color_classifier(), args.out, "color_classifier", 1)
        write_text(args.out, "color_classifier", "labels.txt", "red\ngreen\nblue\n")
        write_text(args.out, "color_classifier", "config.yaml", "max_batch_size: 4\nlabels: labels.txt\n")
        save(box_detector(), args.out, "box_detector", 1)
        write_text(args.out, "box_detector", "labels.txt", "person\ncar\n")
        write_text(args.out, "box_detector", "config.yaml",
                   "max_batch_size: 4\nlabels: labels.txt\npreprocess: {resize: letterbox}\n")
        for name in ("color_classifier", "box_detector"):
            model = color_classifier() if name == "color_classifier" else box_detector()
            save(fp16_io(model), args.out, name + "_fp16", 1)
            for f in ("labels.txt", "config.yaml"):
                with open(os.path.join(args.out, name, f)) as src:
                    write_text(args.out, name + "_fp16", f, src.read())
    for arch in args.torchvision:
        if not os.path.exists(os.path.join(args.out, arch, "1", "model.onnx")):
            export_torchvision(arch, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
