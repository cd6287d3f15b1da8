#!/usr/bin/python3
"""Writes the seed corpora of src/bundle's fuzzers (run from anywhere):

  archive/   first byte 0 + an uncompressed tar, or 1 + a .tar.zst; bundles
             signed by the fuzzer's fixed key (Ed25519 seed 0x42 * 32, id "fuzz")
  manifest/  JSON documents: manifest, signature, key, self-test, baseline

Needs Debian's python3-cryptography and the zstd command.
"""
import base64
import hashlib
import io
import json
import os
import subprocess
import tarfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = ed25519.Ed25519PrivateKey.from_private_bytes(b"\x42" * 32)


def manifest(files, **extra):
    doc = {
        "format_version": 1,
        "release": "fuzz-1",
        "sequence": 3,
        "created": "2024-06-01T12:00:00Z",
        "target": {"arch": "x86_64", "accelerator": "cpu", "min_agent_version": "0.1.0"},
        "files": [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                  for p, d in files],
    }
    doc.update(extra)
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def signature(manifest_bytes, key_id="fuzz"):
    sig = base64.b64encode(KEY.sign(manifest_bytes)).decode()
    return json.dumps({"algorithm": "ed25519", "key_id": key_id, "signature": sig}).encode()


def tar(entries):
    """entries: (name, data) for files, or a prepared TarInfo with data None."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                t.addfile(entry)
                continue
            name, data = entry
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write(folder, name, data):
    with open(os.path.join(HERE, folder, name), "wb") as f:
        f.write(data)


SELF_TEST = [{"name": "ones", "model": "m", "version": "1",
              "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
              "expected_outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2],
                                    "data": [[2, 3]], "absolute_tolerance": 0.001}]}]
BASELINE = {"m": {"output": "y", "bin_edges": [0, 0.5, 1], "proportions": [0.25, 0.75],
                  "samples": 10}}

payload = [("models/m/1/model.onnx", bytes(range(64))), ("config/app.yaml", b"a: 1\n")]
good = manifest(payload, self_test=SELF_TEST, baseline=BASELINE)
head = [("manifest.json", good), ("signature.json", signature(good))]

write("archive", "signed", b"\0" + tar(head + payload))
write("archive", "unsigned", b"\0" + tar([("manifest.json", good)] + payload))
write("archive", "wrong_hash", b"\0" + tar(head + [(payload[0][0], bytes(64)), payload[1]]))
write("archive", "traversal", b"\0" + tar(head + payload + [("models/../../x", b"x")]))
link = tarfile.TarInfo("models/m/2")
link.type = tarfile.SYMTYPE
link.linkname = "/etc"
write("archive", "symlink", b"\0" + tar(head + [link] + payload))
fifo = tarfile.TarInfo("config/fifo")
fifo.type = tarfile.FIFOTYPE
write("archive", "fifo", b"\0" + tar(head + payload + [fifo]))
compressed = subprocess.run(["zstd", "-q", "-c", "-3"], input=tar(head + payload),
                            stdout=subprocess.PIPE, check=True).stdout
write("archive", "signed_zstd", b"\1" + compressed)

write("manifest", "manifest.json", good)
write("manifest", "minimal.json", manifest(payload[:1]))
write("manifest", "signature.json", signature(good))
write("manifest", "public_key.json", json.dumps({
    "algorithm": "ed25519", "key_id": "fuzz",
    "public_key": base64.b64encode(KEY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()}).encode())
write("manifest", "self_test.json", json.dumps(SELF_TEST).encode())
write("manifest", "baseline.json", json.dumps(BASELINE).encode())
write("manifest", "bad_sequence.json", good.replace(b'"sequence": 3', b'"sequence": -3'))
