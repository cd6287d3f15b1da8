#!/usr/bin/env python3
"""Fault-injection suite for the device update path (issue 3).

Every case: a fresh device (state directory) gets release r1 (add_one,
y = x + 1) installed by the real outpost-agent and checked to serve; then
one fault is injected while r2 (y = x + 2) or a broken variant of it is
installed; the agent is restarted when the fault killed it; and the case
passes only when

  (a) outpost-serve behind `<state>/current` answers inference with the
      answer of the release the case must end on,
  (b) `outpost-agent status` (JSON) names that release on that slot, at
      rest, with the expected state and reason code, and
  (c) nothing was lost: the committed release's slot (and the previous
      one's, when the state names one) holds exactly the files of its
      manifest with their SHA-256, state.json and every history line
      parse, and no finished bundle is left in downloads/.

Faults: SIGKILL of the agent at every crash point of an install
(OUTPOST_CRASH_AT, read by test builds), downloads cut, stalled, refused,
corrupted, truncated, oversized, the hub gone for a while or for good,
refused bundles (signatures, tampering, unsafe archive members,
downgrade), runtimes that fail in each way the health gate checks, and full
disks: a real small tmpfs per case when this process may mount one (it
re-executes itself in a private mount namespace with `unshare -m`), else
ENOSPC injected at the write path (OUTPOST_FAIL_WRITE_AT); the table says
which.

Prints one row per fault and the totals; exits 1 when a fault was not
injected, a case did not recover, data was lost, or fewer than 40 distinct
faults ran. Exit 77 (ctest: skipped) when the binaries have no fault hooks.

  test_faults.py [--jobs N] [--only SUBSTRING ...] [--keep]
"""

import argparse
import base64
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MIN_DISTINCT_FAULTS = 40
SKIP = 77

ANSWERS = {1: [2.0, 3.0, 4.0, 5.0], 2: [3.0, 4.0, 5.0, 6.0]}


# --- assets: keys and bundles, built once ------------------------------------

CRASH_WRAPPER = r'''#!/usr/bin/python3
# Test runtime: runs the real outpost-serve, and kills it (then exits 3)
# once this slot is the committed one (`current` points here) -- a runtime
# that passes the health gate and crashes after the commit, every start.
import ctypes, os, signal, subprocess, sys, time
libc = ctypes.CDLL(None)
child = subprocess.Popen([SERVE] + sys.argv[1:],
                         preexec_fn=lambda: libc.prctl(1, signal.SIGKILL))
slot = os.path.realpath(os.getcwd())
current = os.path.join(os.path.dirname(os.path.dirname(slot)), "current")
while child.poll() is None:
    if os.path.realpath(current) == slot:
        time.sleep(0.3)
        child.kill()
        child.wait()
        sys.exit(3)
    time.sleep(0.05)
sys.exit(child.returncode or 1)
'''

SOAK_EXIT_WRAPPER = r'''#!/usr/bin/python3
# Test runtime: runs the real outpost-serve and exits 3 as soon as the agent
# records that this slot is soaking -- a runtime that dies during the soak.
import ctypes, json, os, signal, subprocess, sys, time
libc = ctypes.CDLL(None)
child = subprocess.Popen([SERVE] + sys.argv[1:],
                         preexec_fn=lambda: libc.prctl(1, signal.SIGKILL))
slot = os.path.realpath(os.getcwd())
state_json = os.path.join(os.path.dirname(os.path.dirname(slot)), "state.json")
while child.poll() is None:
    try:
        with open(state_json) as f:
            s = json.load(f)
        if s["state"] == "soaking" and s["update"]["target_slot"] == os.path.basename(slot):
            child.kill()
            child.wait()
            sys.exit(3)
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(0.02)
sys.exit(child.returncode or 1)
'''

NEVER_READY_WRAPPER = "#!/bin/sh\n# Test runtime that never becomes ready.\nexec sleep 600\n"


class Assets:
    """Keys, trust store and every bundle the cases install."""

    def __init__(self, bins, root):
        self.bins = bins
        self.root = root
        self.dir = os.path.join(root, "assets")
        os.makedirs(self.dir)
        self.paths = {}      # bundle name -> file
        self.manifests = {}  # release -> manifest
        self.answers = {}    # release -> expected add_one([1, 2, 3, 4])
        self.escape_abs = os.path.join(self.dir, "absolute-escape.txt")
        rng = random.Random(20240601)
        self.keys = os.path.join(self.dir, "keys")
        self.rogue_keys = os.path.join(self.dir, "rogue-keys")
        self.trust = os.path.join(self.dir, "trust")
        h.run([bins.cli, "keys", "generate", "--out", self.keys, "--name", "release"])
        h.run([bins.cli, "keys", "generate", "--out", self.rogue_keys, "--name", "rogue"])
        os.makedirs(self.trust)
        shutil.copy(os.path.join(self.keys, "release.pub"), self.trust)
        self.blob = rng.randbytes(4 << 20)  # incompressible: sizes the full-disk cases

        self.build("v1", "r1", 10, version=1)
        self.build("v2", "r2", 20, version=2, blob=True)
        self.build("v2-unsigned", "r2-unsigned", 20, version=2, key=None)
        self.build("v2-rogue", "r2-rogue", 20, version=2, key="rogue")
        self.build("v2-downgrade", "r0-downgrade", 5, version=2)
        other_arch = "aarch64" if os.uname().machine in ("x86_64", "amd64") else "x86_64"
        self.build("v2-wrong-arch", "r2-wrong-arch", 20, version=2, arch=other_arch)
        self.build("v2-bad-model", "r2-bad-model", 20, version=2, bad_model=True)
        self.build("v2-wrong-answer", "r2-wrong-answer", 20, version=2, expect_version=1)
        self.build("v2-crash-after-commit", "r2-crash-after-commit", 20, version=2,
                   runtime=self.wrapper("crash-after-commit", CRASH_WRAPPER))
        self.build("v2-never-ready", "r2-never-ready", 20, version=2,
                   runtime=self.wrapper("never-ready", NEVER_READY_WRAPPER))
        self.build("v2-soak-exit", "r2-soak-exit", 20, version=2,
                   runtime=self.wrapper("soak-exit", SOAK_EXIT_WRAPPER))
        noexec = os.path.join(self.dir, "noexec-runtime")
        with open(noexec, "wb") as f:
            f.write(b"\x7fELF" + rng.randbytes(4096))  # not a loadable program
        os.chmod(noexec, 0o755)
        self.build("v2-noexec", "r2-noexec", 20, version=2, runtime=noexec)
        self.craft_variants(rng)

        # What the "hub" serves instead of v2's bytes, for the same sha256/size.
        good = self.bytes("v2")
        corrupt = bytearray(good)
        corrupt[len(good) // 2] ^= 0x01
        self.transit = {
            "/r2.tar.zst": good,
            "/r2-corrupt.tar.zst": bytes(corrupt),
            "/r2-truncated.tar.zst": good[:len(good) * 6 // 10],
            "/r2-oversized.tar.zst": good + rng.randbytes(1 << 20),
        }

    def bytes(self, name):
        with open(self.paths[name], "rb") as f:
            return f.read()

    def wrapper(self, name, text):
        path = os.path.join(self.dir, f"{name}-runtime")
        with open(path, "w") as f:
            f.write(text.replace("[SERVE]", repr([self.bins.serve])))
        os.chmod(path, 0o755)
        return path

    def build(self, name, release, sequence, version, expect_version=None, blob=False,
              key="release", arch=None, bad_model=False, runtime=None):
        src = os.path.join(self.dir, "src-" + name)
        model_dir = os.path.join(src, "models", "add_one", "1")
        os.makedirs(model_dir)
        model = os.path.join(model_dir, "model.onnx")
        if bad_model:
            with open(model, "wb") as f:
                f.write(b"this is not an ONNX model\n" * 10)
        else:
            shutil.copy(os.path.join(self.bins.models, "add_one", str(version), "model.onnx"),
                        model)
        configs = []
        settings = os.path.join(src, "settings.yaml")
        with open(settings, "w") as f:
            f.write(f"release: {release}\nthreshold: 0.5\n")
        configs.append(settings)
        if blob:
            path = os.path.join(src, "blob.bin")
            with open(path, "wb") as f:
                f.write(self.blob)
            configs.append(path)
        expect = ANSWERS[expect_version or version]
        selftest = os.path.join(src, "selftest.json")
        with open(selftest, "w") as f:
            json.dump([{"name": "plus", "model": "add_one",
                          "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                      "data": h.INPUT}],
                          "expected_outputs": [{"name": "y", "datatype": "FP32",
                                                "shape": [1, 4], "data": expect}]}], f)
        out = os.path.join(self.dir, name + ".tar.zst")
        cmd = [self.bins.cli, "bundle", "build", "--models", os.path.join(src, "models"),
               "--self-test", selftest, "--name", release, "--sequence", str(sequence),
               "--out", out]
        for c in configs:
            cmd += ["--config", c]
        if arch:
            cmd += ["--arch", arch]
        if runtime:
            cmd += ["--runtime", runtime]
        if key == "release":
            cmd += ["--sign-key", os.path.join(self.keys, "release.key")]
        elif key == "rogue":
            cmd += ["--sign-key", os.path.join(self.rogue_keys, "rogue.key")]
        h.run(cmd)
        self.paths[name] = out
        self.manifests[release] = h.bundle_manifest(out)
        self.answers[release] = ANSWERS[version]

    def craft(self, name, members):
        out = os.path.join(self.dir, name + ".tar.zst")
        h.write_bundle(out, members)
        self.paths[name] = out

    def craft_variants(self, rng):
        """Bundles no honest builder makes, from v2's archive members."""
        base = h.read_bundle(self.paths["v2"])
        names = [m.name for m, _ in base]
        assert names[:2] == ["manifest.json", "signature.json"], names
        manifest_i, sig_i = 0, 1
        model_i = names.index("models/add_one/1/model.onnx")
        blob_i = names.index("config/blob.bin")
        settings_i = names.index("config/settings.yaml")

        def variant(edit):
            members = [(m, d) for m, d in base]
            edit(members)
            return members

        def bad_signature(ms):
            sig = json.loads(ms[sig_i][1])
            raw = base64.b64decode(sig["signature"])
            sig["signature"] = base64.b64encode(bytes([raw[0] ^ 0x80]) + raw[1:]).decode()
            ms[sig_i] = (ms[sig_i][0], json.dumps(sig).encode())

        def tampered_manifest(ms):
            # A raised sequence number: same files, different signed bytes.
            m = json.loads(ms[manifest_i][1])
            m["sequence"] = 99
            ms[manifest_i] = (ms[manifest_i][0], json.dumps(m, indent=2).encode())

        def tampered_payload(ms):
            data = bytearray(ms[blob_i][1])
            data[12345] ^= 0xFF
            ms[blob_i] = (ms[blob_i][0], bytes(data))

        def traversal(ms):
            ms.append((h.file_info("models/../../../escaped.txt"), b"owned\n"))

        def absolute(ms):
            ms.append((h.file_info(self.escape_abs), b"owned\n"))

        def symlink(ms):
            ms.insert(settings_i, (h.file_info("config/passwd", kind=tarfile.SYMTYPE,
                                               linkname="/etc/passwd"), None))

        def fifo(ms):
            ms.insert(settings_i, (h.file_info("config/pipe", kind=tarfile.FIFOTYPE), None))

        def duplicate(ms):
            ms.append(ms[model_i])

        def extra(ms):
            ms.append((h.file_info("config/extra.yaml"), b"unlisted: true\n"))

        def missing(ms):
            del ms[settings_i]

        def oversized(ms):
            ms[settings_i] = (ms[settings_i][0], ms[settings_i][1] + b"#" * (1 << 20))

        self.craft("v2-bad-signature", variant(bad_signature))
        self.craft("v2-tampered-manifest", variant(tampered_manifest))
        self.craft("v2-tampered-payload", variant(tampered_payload))
        self.craft("v2-path-traversal", variant(traversal))
        self.craft("v2-absolute-path", variant(absolute))
        self.craft("v2-symlink", variant(symlink))
        self.craft("v2-special-file", variant(fifo))
        self.craft("v2-duplicate", variant(duplicate))
        self.craft("v2-extra-file", variant(extra))
        self.craft("v2-missing-file", variant(missing))
        self.craft("v2-oversized-file", variant(oversized))

        good = self.bytes("v2")
        corrupt = bytearray(good)
        corrupt[len(good) * 6 // 10] ^= 0x20
        for name, data in (("v2-corrupt-byte", bytes(corrupt)),
                           ("v2-truncated", good[:len(good) * 6 // 10]),
                           ("v2-garbage", rng.randbytes(64 * 1024))):
            path = os.path.join(self.dir, name + ".tar.zst")
            with open(path, "wb") as f:
                f.write(data)
            self.paths[name] = path


# --- cases --------------------------------------------------------------------

class Case:
    def __init__(self, name, category, what, drive, expect, reasons=(), tmpfs=None,
                 injected_enospc=False):
        self.name = name
        self.category = category
        self.what = what
        self.drive = drive        # fn(ctx) -> (injected: bool, detail: str)
        self.expect = expect      # release the device must end on
        self.reasons = set(reasons)  # acceptable update.reason; empty: committed
        self.tmpfs = tmpfs        # bytes: state dir on a tmpfs this big
        self.mechanism = "tmpfs ENOSPC" if tmpfs else "injected ENOSPC" if injected_enospc else ""


class Result:
    def __init__(self, case):
        self.case = case
        self.injected = False
        self.recovered = False
        self.data_lost = 0
        self.detail = ""
        self.end = ""
        self.problems = []
        self.seconds = 0.0


class Ctx:
    """What a case's drive function works with."""

    def __init__(self, suite, case, root):
        self.suite = suite
        self.case = case
        self.assets = suite.assets
        self.dev = h.Device(suite.bins, root, suite.assets.trust)
        self.hubs = []
        self.source = None
        self.offer_key = None

    # offering the update

    def offer(self, bundle):
        """Puts the bundle in the device's folder; returns the agent source (None)."""
        name = bundle + ".tar.zst"
        h.copy_bundle(self.assets.paths[bundle], self.dev.bundles, name)
        self.offer_key = ("file:" + name + ":", None)
        self.source = None
        return None

    def offer_url(self, served="/r2.tar.zst", **knobs):
        """Serves v2 (or a damaged copy) from a hub; returns (url, sha, size) of the real v2."""
        good = self.assets.transit["/r2.tar.zst"]
        hub = h.Hub({served: self.assets.transit[served], "/r2.tar.zst": good})
        for k, v in knobs.items():
            setattr(hub, k, v)
        self.hubs.append(hub)
        digest = hashlib.sha256(good).hexdigest()
        self.source = (hub.url(served), digest, len(good))
        self.offer_key = (None, "sha256:" + digest)
        return hub

    def handled(self, s):
        """The offered bundle is done with: handled for good, or deferred to a
        later retry after a failure that may pass (fetch_failed, io_error)."""
        prefix, exact = self.offer_key
        ids = s.get("handled", []) + [d["offer_id"] for d in s.get("deferred", [])]
        for x in ids:
            if (prefix and x.startswith(prefix)) or (exact and x == exact):
                return True
        return False

    def settle(self, timeout=90, predicate=None):
        """Waits until the agent is at rest with the offered bundle handled."""
        return self.dev.wait_for(
            predicate or (lambda s: s["state"] in h.AT_REST and self.handled(s)), timeout,
            "the install to end")

    def downloads_part(self):
        d = os.path.join(self.dev.state, "downloads")
        for n in os.listdir(d):
            if n.endswith(".part"):
                return os.path.getsize(os.path.join(d, n))
        return None

    def wait_log(self, text, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.dev.log_text():
                return True
            time.sleep(0.05)
        return False


def resumed(hub):
    return [e for e in hub.log if e["range_start"]]


def crash_case(point, bundle="v2", deaths=1, url=False):
    def drive(ctx):
        if url:
            hub = ctx.offer_url()
        else:
            ctx.offer(bundle)
        state_at_death = []
        for _ in range(deaths):
            ctx.dev.start(source=ctx.source, env={"OUTPOST_CRASH_AT": point})
            rc = ctx.dev.wait_exit(90)
            if rc != -signal.SIGKILL:
                return False, f"the agent did not die at {point} (exit {rc})"
            state_at_death.append(ctx.dev.state_file()["state"])
        part = ctx.downloads_part()
        ctx.dev.start(source=ctx.source)
        ctx.settle()
        detail = f"SIGKILL at {point} (state.json then: {', '.join(state_at_death)}); restarted"
        if url and point.startswith("fetch.part_written"):
            if not part:
                return False, "no partial download was left by the kill"
            if not resumed(hub):
                return False, f"the restart did not resume the {part}-byte .part"
            detail += f"; resumed from byte {resumed(hub)[0]['range_start']}"
        if url and point in ("fetch.before_rename", "fetch.after_rename"):
            sent = sum(e["sent"] for e in hub.log)
            if sent != ctx.source[2]:
                return False, f"the bundle was downloaded again ({sent} bytes sent)"
            detail += "; not downloaded again"
        return True, detail
    return drive


def refusal_case(bundle):
    def drive(ctx):
        ctx.offer(bundle)
        ctx.dev.start()
        s = ctx.settle()
        return (s["update"]["reason"] != "",
                f"refused: {s['update']['reason']}: {s['update']['message'][:160]}")
    return drive


def catalogue(mode):
    """Every case. `mode`: "tmpfs" or "inject" (how disks are filled)."""
    cases = []

    def add(*args, **kw):
        cases.append(Case(*args, **kw))

    # kill -9 at every step of an install, then restart.
    steps = [
        ("updater.after_download", "bundle copied, state still downloading"),
        ("updater.after_verify", "manifest verified, state still verifying"),
        ("updater.before_unpack", "target slot wiped, nothing unpacked"),
        ("bundle.mid_unpack", "first payload file written, rest not"),
        ("bundle.mid_unpack:2", "two payload files written, one not"),
        ("bundle.before_fsync", "all files written, directories not fsynced"),
        ("updater.after_unpack", "slot unpacked, state still unpacking"),
        ("updater.after_start", "new runtime spawned"),
        ("updater.after_ready", "new runtime ready, self-tests not run"),
        ("updater.after_health", "self-tests passed, soak not started"),
        ("updater.after_soak", "soak passed, state still soaking"),
        ("updater.before_switch", "state committing, current not switched"),
        ("updater.after_switch", "current switched, commit not recorded"),
        ("updater.before_commit_record", "commit about to be recorded"),
        ("updater.after_commit", "commit recorded, old runtime still running"),
    ]
    for point, what in steps:
        add(f"kill -9 at {point}", "crash", f"SIGKILL: {what}", crash_case(point), "r2")
    for point, what in [("updater.rollback_started", "rolling_back recorded, nothing undone"),
                        ("updater.mid_rollback", "current restored, runtime not restarted"),
                        ("updater.after_rollback", "rolled_back recorded")]:
        add(f"kill -9 at {point}", "crash", f"SIGKILL during a rollback: {what}",
            crash_case(point, bundle="v2-wrong-answer"), "r1", {"self_test_failed"})
    add("kill -9 in a crash-loop rollback", "crash",
        "SIGKILL as the agent starts rolling back a runtime crash loop",
        crash_case("updater.rollback_started", bundle="v2-crash-after-commit"), "r1",
        {"crash_loop"})
    add("kill -9 at every attempt", "crash",
        "SIGKILL at updater.after_start on 3 starts in a row (max-attempts 3)",
        crash_case("updater.after_start", deaths=3), "r1", {"interrupted"})
    add("SIGTERM during the soak", "crash", "graceful stop mid-install, then restart",
        sigterm_in_soak, "r2")

    # Downloads from the hub (HttpBundleSource, resumable).
    for point, what in [("fetch.part_written:5", "mid-download"),
                        ("fetch.before_rename", "download verified, not renamed"),
                        ("fetch.after_rename", "download renamed, state still downloading")]:
        add(f"kill -9 at {point.split(':')[0]}", "download", f"SIGKILL {what}",
            crash_case(point, url=True), "r2")
    add("download cut half-way", "download", "connection closed at 50%, resumed with Range",
        download_cut, "r2")
    add("resume refused (200 to Range)", "download",
        "cut at 50%, server ignores Range: start over", download_cut_no_range, "r2")
    add("stalled download", "download", "server goes silent at 30%: stall timeout, resume",
        download_stall, "r2")
    add("hub answers 503 x3", "download", "three 503s before the bundle", hub_flaky, "r2")
    add("hub gone mid-download, back", "download",
        "server disappears at 30%, returns after 1.5 s", hub_gone_back, "r2")
    add("hub gone mid-download, for good", "download",
        "server disappears at 30% and stays away", hub_gone_for_good, "r1", {"fetch_failed"})
    add("hub 404", "download", "bundle not found on the hub", hub_404, "r1", {"fetch_failed"})
    add("corrupted byte in transit", "download", "one bit flipped in the served bytes",
        transit("/r2-corrupt.tar.zst"), "r1", {"fetch_failed"})
    add("truncated download", "download", "hub serves 60% of the bundle",
        transit("/r2-truncated.tar.zst"), "r1", {"fetch_failed"})
    add("oversized download", "download", "hub serves the bundle plus 1 MiB",
        transit("/r2-oversized.tar.zst"), "r1", {"fetch_failed"})
    add("SIGTERM mid-download", "download", "graceful stop at ~25%, resumed after restart",
        sigterm_mid_download, "r2")

    # Bundles the device must refuse (folder source).
    for bundle, what, reasons in [
            ("v2-unsigned", "no signature.json", {"no_signature"}),
            ("v2-rogue", "signed by a key the device does not trust", {"unknown_key"}),
            ("v2-bad-signature", "signature bytes altered", {"bad_signature"}),
            ("v2-tampered-manifest", "manifest edited after signing", {"bad_signature"}),
            ("v2-tampered-payload", "payload byte changed after signing", {"wrong_hash"}),
            ("v2-path-traversal", "member models/../../../escaped.txt", {"path_traversal"}),
            ("v2-absolute-path", "member with an absolute path", {"absolute_path"}),
            ("v2-symlink", "symlink member to /etc/passwd", {"link"}),
            ("v2-special-file", "FIFO member", {"special_file"}),
            ("v2-duplicate", "the model member twice", {"duplicate_name"}),
            ("v2-extra-file", "member the manifest does not list", {"extra_file"}),
            ("v2-missing-file", "listed file absent", {"file_missing"}),
            ("v2-oversized-file", "member 1 MiB larger than listed", {"wrong_size"}),
            ("v2-corrupt-byte", "one bit flipped in the compressed stream",
             {"malformed_archive", "wrong_hash"}),
            ("v2-truncated", "file cut at 60%", {"malformed_archive"}),
            ("v2-garbage", "random bytes named .tar.zst", {"malformed_archive"}),
            ("v2-downgrade", "sequence 5 below the floor 10", {"sequence_below_floor"}),
            ("v2-wrong-arch", "built for another architecture", {"target_mismatch"}),
    ]:
        add(bundle.replace("v2-", "bundle: "), "bundle", what, refusal_case(bundle), "r1",
            reasons)

    # Runtimes that fail the health gate, or crash after the commit.
    add("model fails to load", "runtime", "model.onnx is not a model",
        refusal_case("v2-bad-model"), "r1", {"model_load_failed"})
    add("self-test answers wrongly", "runtime", "model answers x+2, self-test expects x+1",
        refusal_case("v2-wrong-answer"), "r1", {"self_test_failed"})
    add("runtime never ready", "runtime", "runtime never opens its port (ready-timeout 2 s)",
        never_ready, "r1", {"not_ready"})
    add("runtime exits in soak", "runtime", "runtime dies once the soak starts",
        soak_exit, "r1", {"soak_failed"})
    add("runtime cannot exec", "runtime", "shipped runtime is not a program",
        refusal_case("v2-noexec"), "r1", {"runtime_failed"})
    add("runtime crashes after commit", "runtime",
        "committed runtime exits 3x: crash-loop rollback", crash_after_commit, "r1",
        {"crash_loop"})

    # Full disks.
    if mode == "tmpfs":
        add("disk full: bundle copy", "disk", "2 MiB tmpfs: the 4 MiB bundle does not fit",
            disk_full_copy, "r1", {"fetch_failed"}, tmpfs=2 << 20)
        add("disk full: download", "disk", "2 MiB tmpfs: free-space check refuses download",
            disk_full_download, "r1", {"fetch_failed"}, tmpfs=2 << 20)
        add("disk full: unpack", "disk", "7 MiB tmpfs: bundle fits, its unpack does not",
            disk_full_unpack, "r1", {"io_error"}, tmpfs=7 << 20)
        add("disk fills mid-download", "disk",
            "16 MiB tmpfs filled at ~10%; freed later: resumes", disk_fills_mid_download, "r2",
            tmpfs=16 << 20)
        add("disk full when the update comes", "disk",
            "16 MiB tmpfs full: no state write works; freed later", disk_full_at_rest, "r2",
            tmpfs=16 << 20)
    else:
        add("disk full: download", "disk", "ENOSPC injected at the first write of the download",
            inject_write("fetch.part_write:1", url=True), "r1", {"fetch_failed"},
            injected_enospc=True)
        add("disk fills mid-download", "disk", "ENOSPC injected at fetch.part_write:20 on",
            inject_write("fetch.part_write:20", url=True), "r1", {"fetch_failed"},
            injected_enospc=True)
        add("disk full: unpack", "disk", "ENOSPC injected at bundle.unpack_write:2",
            inject_write("bundle.unpack_write:2"), "r1", {"io_error"}, injected_enospc=True)
        add("disk full when the update comes", "disk",
            "ENOSPC injected at every state write; agent restarted",
            state_write_enospc("updater.state_write:1"), "r2", injected_enospc=True)
    add("ENOSPC on state.json", "disk",
        "ENOSPC injected at updater.state_write:4 onwards; agent restarted",
        state_write_enospc("updater.state_write:4"), "r2", injected_enospc=True)
    return cases


def sigterm_in_soak(ctx):
    ctx.offer("v2")
    ctx.dev.start(flags=["--soak", "30"])
    ctx.dev.wait_for(lambda s: s["state"] == "soaking", 60, "soaking")
    rc = ctx.dev.stop()
    state = ctx.dev.state_file()["state"]
    if rc != 0:
        return False, f"SIGTERM: agent exit {rc}"
    ctx.dev.start()
    ctx.settle()
    return True, f"SIGTERM in soak: exit 0, state.json {state}; restarted"


def download_cut(ctx):
    hub = ctx.offer_url(cut_after=len(ctx.assets.transit["/r2.tar.zst"]) // 2)
    ctx.dev.start(source=ctx.source)
    ctx.settle()
    r = resumed(hub)
    cut = [e for e in hub.log if e.get("cut") == "cut"]
    if not cut or not r:
        return False, f"no cut+resume seen: {hub.log}"
    return True, f"cut after {cut[0]['sent']} bytes; resumed at byte {r[0]['range_start']}"


def download_cut_no_range(ctx):
    hub = ctx.offer_url(cut_after=len(ctx.assets.transit["/r2.tar.zst"]) // 2,
                        ignore_range=True)
    ctx.dev.start(source=ctx.source)
    ctx.settle()
    full = [e for e in hub.log if e["status"] == 200]
    return len(full) >= 2, f"{len(full)} full answers (agent started over)"


def download_stall(ctx):
    hub = ctx.offer_url(stall_after=len(ctx.assets.transit["/r2.tar.zst"]) * 3 // 10,
                        stall_seconds=8)
    ctx.dev.start(source=ctx.source, flags=["--download-stall-timeout", "1"])
    ctx.settle()
    r = resumed(hub)
    return bool(r), f"stalled at 30%; resumed at byte {r[0]['range_start'] if r else '-'}"


def hub_flaky(ctx):
    hub = ctx.offer_url(fail_first=3)
    ctx.dev.start(source=ctx.source)
    ctx.settle()
    n = len([e for e in hub.log if e["status"] == 503])
    return n == 3, f"{n} x HTTP 503, then the bundle"


def hub_gone_back(ctx):
    hub = ctx.offer_url(die_after=len(ctx.assets.transit["/r2.tar.zst"]) * 3 // 10,
                        back_after=1.5)
    ctx.dev.start(source=ctx.source, flags=["--download-retries", "30"])
    ctx.settle()
    r = resumed(hub)
    return bool(r) and any(e.get("cut") == "die" for e in hub.log), \
        f"hub down at 30% for 1.5 s; resumed at byte {r[0]['range_start'] if r else '-'}"


def hub_gone_for_good(ctx):
    hub = ctx.offer_url(die_after=len(ctx.assets.transit["/r2.tar.zst"]) * 3 // 10)
    ctx.dev.start(source=ctx.source)
    s = ctx.settle()
    return hub.down, f"hub down at 30%; agent gave up: {s['update']['message'][:140]}"


def hub_404(ctx):
    ctx.offer_url()
    url, digest, size = ctx.source
    ctx.source = (url.replace("/r2.tar.zst", "/nothing-here.tar.zst"), digest, size)
    ctx.dev.start(source=ctx.source)
    s = ctx.settle()
    return "404" in s["update"]["message"], s["update"]["message"][:140]


def transit(path):
    def drive(ctx):
        ctx.offer_url(served=path)
        ctx.dev.start(source=ctx.source)
        s = ctx.settle()
        return True, f"{path}: {s['update']['message'][:150]}"
    return drive


def sigterm_mid_download(ctx):
    size = len(ctx.assets.transit["/r2.tar.zst"])
    hub = ctx.offer_url(rate=2 << 20)
    ctx.dev.start(source=ctx.source)
    deadline = time.monotonic() + 30
    while (ctx.downloads_part() or 0) < size // 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    rc = ctx.dev.stop()
    part = ctx.downloads_part()
    state = ctx.dev.state_file()["state"]
    if rc != 0 or not part:
        return False, f"SIGTERM mid-download: exit {rc}, .part {part}"
    hub.rate = None
    ctx.dev.start(source=ctx.source)
    ctx.settle()
    r = resumed(hub)
    return bool(r), (f"SIGTERM at {part} bytes: exit 0, state.json {state}; resumed at byte "
                     f"{r[0]['range_start'] if r else '-'}")


def never_ready(ctx):
    ctx.offer("v2-never-ready")
    ctx.dev.start(flags=["--ready-timeout", "2"])
    s = ctx.settle()
    return True, s["update"]["message"][:150]


def soak_exit(ctx):
    ctx.offer("v2-soak-exit")
    ctx.dev.start(flags=["--soak", "3"])
    s = ctx.settle()
    return True, s["update"]["message"][:150]


def crash_after_commit(ctx):
    ctx.offer("v2-crash-after-commit")
    ctx.dev.start()
    ctx.dev.wait_for(lambda s: (s.get("committed") or {}).get("release") ==
                     "r2-crash-after-commit", 60, "the commit")
    s = ctx.settle(predicate=lambda s: s["state"] == "rolled_back")
    return True, f"committed, then: {s['update']['message'][:140]}"


# Full disks on a real tmpfs (the state dir is the mount).

def disk_full_copy(ctx):
    ctx.offer("v2")
    ctx.dev.start()
    s = ctx.settle()
    msg = s["update"]["message"]
    return "No space left" in msg, msg[:150]


def disk_full_download(ctx):
    ctx.offer_url()
    ctx.dev.start(source=ctx.source)
    s = ctx.settle()
    msg = s["update"]["message"]
    return "free" in msg or "space" in msg, msg[:150]


def disk_full_unpack(ctx):
    ctx.offer("v2")
    ctx.dev.start()
    s = ctx.settle()
    msg = s["update"]["message"]
    return "No space left" in msg, msg[:150]


def disk_fills_mid_download(ctx):
    size = len(ctx.assets.transit["/r2.tar.zst"])
    hub = ctx.offer_url(rate=1 << 20)
    ctx.dev.start(source=ctx.source)
    deadline = time.monotonic() + 30
    while (ctx.downloads_part() or 0) < size // 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    filler = os.path.join(ctx.dev.state, "filler")
    h.fill_disk(filler)
    hit = ctx.wait_log("No space left", 30)
    # While the disk is full the old release keeps serving.
    slot, out = ctx.dev.infer()
    os.remove(filler)
    hub.rate = None
    ctx.settle()
    r = resumed(hub)
    ok = hit and out == ANSWERS[1] and bool(r)
    return ok, (f"disk filled at ~10% ({'ENOSPC seen' if hit else 'no ENOSPC'}); r1 served "
                f"meanwhile: {out == ANSWERS[1]}; freed; resumed at byte "
                f"{r[0]['range_start'] if r else '-'}")


def disk_full_at_rest(ctx):
    ctx.dev.start()
    ctx.dev.infer()  # r1 up before the disk fills
    h.fill_disk(os.path.join(ctx.dev.state, "filler"))
    ctx.offer("v2")
    hit = ctx.wait_log("No space left", 30)
    time.sleep(1.0)
    slot, out = ctx.dev.infer()
    stuck = ctx.dev.state_file()["state"]
    os.remove(os.path.join(ctx.dev.state, "filler"))
    ctx.settle()
    return hit and out == ANSWERS[1], (f"ENOSPC {'seen' if hit else 'not seen'}; state.json "
                                       f"kept at {stuck}; r1 served while full; freed")


# Full disks by injection (OUTPOST_FAIL_WRITE_AT).

def inject_write(spec, url=False):
    def drive(ctx):
        if url:
            ctx.offer_url()
        else:
            ctx.offer("v2")
        ctx.dev.start(source=ctx.source, env={"OUTPOST_FAIL_WRITE_AT": spec})
        s = ctx.settle()
        msg = s["update"]["message"]
        return "injected write failure" in msg, msg[:150]
    return drive


def state_write_enospc(spec):
    def drive(ctx):
        ctx.offer("v2")
        ctx.dev.start(env={"OUTPOST_FAIL_WRITE_AT": spec})
        hit = ctx.wait_log("injected write failure", 30)
        time.sleep(0.5)
        slot, out = ctx.dev.infer()
        stuck = ctx.dev.state_file()["state"]
        rc = ctx.dev.stop()
        ctx.dev.start()
        ctx.settle()
        return hit and out == ANSWERS[1], (f"state writes fail ({spec}); state.json kept at "
                                           f"{stuck}, r1 served; stop exit {rc}; restarted")
    return drive


# --- running a case -------------------------------------------------------------

class Suite:
    def __init__(self, args):
        self.args = args
        self.bins = h.Binaries()
        self.root = tempfile.mkdtemp(prefix="outpost-fault-")
        self.mode = "inject"
        self.assets = None

    def prepare(self):
        forced = os.environ.get("OUTPOST_FAULT_ENOSPC", "")
        if forced != "inject" and h.tmpfs_possible(os.path.join(self.root, "probe")):
            self.mode = "tmpfs"
        t0 = time.monotonic()
        self.assets = Assets(self.bins, self.root)
        return time.monotonic() - t0

    def run_case(self, case):
        r = Result(case)
        root = os.path.join(self.root, "cases", case.name.replace(" ", "_").replace("/", "_")
                            .replace(":", "_"))
        os.makedirs(root)
        ctx = Ctx(self, case, root)
        t0 = time.monotonic()
        mounted = False
        try:
            if case.tmpfs:
                h.mount_tmpfs(ctx.dev.state, case.tmpfs)
                mounted = True
            install_first_release(ctx)
            r.injected, r.detail = case.drive(ctx)
            verify(ctx, r)
        except Exception as e:  # a case failing is a result, not a crash of the suite
            r.problems.append(f"{type(e).__name__}: {e}")
            if not isinstance(e, AssertionError):
                r.problems.append(traceback.format_exc())
        finally:
            rc = ctx.dev.stop()
            if rc not in (0, None) and not r.problems:
                r.problems.append(f"agent exit {rc} on SIGTERM")
            for hub in ctx.hubs:
                hub.stop()
            if r.problems:
                r.recovered = False
                r.problems.append(ctx.dev.log_tail())
            if mounted:
                h.unmount(ctx.dev.state)
        r.seconds = time.monotonic() - t0
        if r.recovered and not self.args.keep:
            shutil.rmtree(root, ignore_errors=True)
        return r


def install_first_release(ctx):
    ctx.offer("v1")
    ctx.dev.start()
    ctx.dev.wait_for(lambda s: s["state"] == "committed" and
                     (s.get("committed") or {}).get("release") == "r1", 60, "r1 committed")
    slot, out = ctx.dev.infer()
    if out != ANSWERS[1] or slot != "A":
        raise AssertionError(f"r1 serves {out} on slot {slot}")
    rc = ctx.dev.stop()
    if rc != 0:
        raise AssertionError(f"agent exit {rc} on SIGTERM after installing r1")


def verify(ctx, r):
    """(a) serving, (b) status truthful, (c) nothing lost. Fills r."""
    case, dev, assets = ctx.case, ctx.dev, ctx.assets
    problems = r.problems
    if not dev.alive():
        problems.append(f"the agent is not running (exit {dev.proc.returncode})")
    slot, out = dev.infer()
    st = dev.status()
    committed = st.get("committed") or {}
    update = st.get("update") or {}
    r.end = f"{st['state']} {committed.get('release')}@{committed.get('slot')}" + \
        (f" ({update.get('reason')})" if update.get("reason") else "")
    # (a) + (b)
    if st["state"] not in h.AT_REST:
        problems.append(f"status: state {st['state']} is not at rest")
    if committed.get("release") != case.expect:
        problems.append(f"status names {committed.get('release')}, expected {case.expect}")
    if committed.get("slot") != slot:
        problems.append(f"status says slot {committed.get('slot')}, current is {slot}")
    want = assets.answers.get(committed.get("release"))
    if out != want:
        problems.append(f"serving answers {out}, release {committed.get('release')} "
                        f"answers {want}")
    if case.reasons:
        if st["state"] != "rolled_back" or update.get("reason") not in case.reasons:
            problems.append(f"status: {st['state']} reason {update.get('reason')!r}, expected "
                            f"rolled_back with {sorted(case.reasons)}")
    elif st["state"] != "committed" or update.get("reason"):
        problems.append(f"status: {st['state']} reason {update.get('reason')!r}, expected "
                        f"committed")
    if not ctx.handled(st):
        problems.append("the offered bundle is neither in `handled` nor in `deferred`")
    deferred = [d["offer_id"] for d in st.get("deferred", [])]
    if deferred and not (case.reasons & {"fetch_failed", "io_error"}):
        problems.append(f"deferred {deferred} after a failure that does not pass")
    if update.get("reason") in ("fetch_failed", "io_error") and not deferred:
        problems.append("a failure that may pass left the bundle refused for good, not deferred")
    if st.get("sequence_floor", 0) < committed.get("sequence", 0):
        problems.append(f"sequence_floor {st.get('sequence_floor')} below the committed "
                        f"release's {committed.get('sequence')}")
    # (c) data
    lost = []
    if committed.get("release") in assets.manifests:
        lost += [f"committed {committed['release']}: {p}" for p in
                 h.check_slot(dev.slot_dir(committed["slot"]),
                              assets.manifests[committed["release"]])]
    previous = st.get("previous")
    if previous:
        if previous.get("slot") == committed.get("slot"):
            problems.append("previous and committed name the same slot")
        elif previous.get("release") in assets.manifests:
            lost += [f"previous {previous['release']}: {p}" for p in
                     h.check_slot(dev.slot_dir(previous["slot"]),
                                  assets.manifests[previous["release"]])]
    with open(os.path.join(dev.state, "history.jsonl"), "rb") as f:
        for n, line in enumerate(f.read().splitlines(), 1):
            try:
                json.loads(line)
            except ValueError:
                lost.append(f"history.jsonl line {n} is damaged")
    # The agent deletes the bundle just after recording the end of the
    # install (and stopping the old runtime): give it that moment.
    deadline = time.monotonic() + 10
    while True:
        stray = [n for n in os.listdir(os.path.join(dev.state, "downloads"))
                 if n.endswith(".tar.zst")]
        if not stray or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if stray:
        problems.append(f"finished bundles left in downloads/: {stray}")
    for leftover in ("escaped.txt",):
        if os.path.exists(os.path.join(dev.root, leftover)):
            lost.append(f"a bundle wrote {leftover} outside its slot")
    if os.path.exists(assets.escape_abs):
        lost.append(f"a bundle wrote {assets.escape_abs}")
    r.data_lost = len(lost)
    problems.extend(lost)
    r.recovered = not problems


# --- main --------------------------------------------------------------------

def reexec_in_mount_namespace():
    """Runs the suite in a private mount namespace (as root), so it may mount
    small tmpfs filesystems that vanish with it."""
    if os.environ.get("OUTPOST_FAULT_NS") or os.environ.get("OUTPOST_FAULT_ENOSPC") == "inject":
        return
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        return
    os.environ["OUTPOST_FAULT_NS"] = "1"
    sys.stdout.flush()
    os.execvp("unshare", ["unshare", "-m", "--propagation", "private", sys.executable,
                          os.path.abspath(__file__)] + sys.argv[1:])


def print_table(results, mode, prep_s, wall_s):
    rows = []
    for i, r in enumerate(results, 1):
        c = r.case
        how = c.what + (f" [{c.mechanism}]" if c.mechanism else "")
        rows.append([str(i), c.name, c.category, how,
                     "yes" if r.injected else "NO", "yes" if r.recovered else "NO",
                     r.end, str(r.data_lost), f"{r.seconds:.1f}"])
    head = ["#", "fault", "category", "how", "injected", "recovered", "end state", "data lost",
            "s"]
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    widths[3] = min(widths[3], 90)

    def line(cells):
        return "| " + " | ".join(c[:widths[i]].ljust(widths[i]) for i, c in
                                 enumerate(cells)) + " |"

    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    distinct = len({r.case.name for r in results})
    injected = sum(r.injected for r in results)
    recovered = sum(r.recovered for r in results)
    lost = sum(r.data_lost for r in results)
    print()
    print(f"faults injected: {injected}/{len(results)} ({distinct} distinct); "
          f"recovered: {recovered}/{len(results)} "
          f"({100.0 * recovered / max(1, len(results)):.0f}%); data lost: {lost}")
    disk = ("real ENOSPC: each disk case mounts a small tmpfs as the state directory "
            "(private mount namespace via unshare -m)" if mode == "tmpfs" else
            "ENOSPC injected at the write path (OUTPOST_FAIL_WRITE_AT): mounting a tmpfs "
            "is not allowed here")
    print(f"full disk: {disk}")
    by_cat = {}
    for r in results:
        by_cat.setdefault(r.case.category, []).append(r)
    print("by category: " + ", ".join(
        f"{k} {sum(x.recovered for x in v)}/{len(v)}" for k, v in by_cat.items()))
    print(f"time: {wall_s:.0f} s wall (assets {prep_s:.1f} s)")
    return injected, recovered, lost, distinct


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=3, help="cases run at once")
    ap.add_argument("--only", action="append", default=[],
                    help="run the cases whose name contains this (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep every case's directory")
    args = ap.parse_args()

    hooks = os.environ.get("OUTPOST_TEST_HOOKS", "ON").upper()
    if hooks in ("OFF", "0", "FALSE", "NO"):
        print("SKIPPED: the binaries were built with -DOUTPOST_TEST_HOOKS=OFF, so "
              "OUTPOST_CRASH_AT / OUTPOST_FAIL_WRITE_AT do nothing; reconfigure with "
              "-DOUTPOST_TEST_HOOKS=ON")
        return SKIP
    reexec_in_mount_namespace()

    t0 = time.monotonic()
    suite = Suite(args)
    prep_s = suite.prepare()
    cases = catalogue(suite.mode)
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    if args.only:
        cases = [c for c in cases if any(o in c.name for o in args.only)]
    print(f"fault suite: {len(cases)} cases, {args.jobs} at a time, full-disk mode "
          f"{suite.mode}, work dir {suite.root}", flush=True)

    results = [None] * len(cases)
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(suite.run_case, c): i for i, c in enumerate(cases)}
        for f in concurrent.futures.as_completed(futures):
            i = futures[f]
            r = f.result()
            results[i] = r
            with lock:
                mark = "ok  " if r.recovered and r.injected else "FAIL"
                print(f"[{mark}] {r.case.name} ({r.seconds:.1f} s): {r.detail}", flush=True)
                if not (r.recovered and r.injected):
                    for p in r.problems:
                        print("       " + p.replace("\n", "\n       "))
    print()
    injected, recovered, lost, distinct = print_table(results, suite.mode, prep_s,
                                                      time.monotonic() - t0)
    failed = []
    if injected < len(results):
        failed.append(f"{len(results) - injected} faults not injected")
    if recovered < len(results):
        failed.append(f"{len(results) - recovered} not recovered")
    if lost:
        failed.append(f"{lost} data lost")
    if not args.only and distinct < MIN_DISTINCT_FAULTS:
        failed.append(f"only {distinct} distinct faults (< {MIN_DISTINCT_FAULTS})")
    if failed:
        print("FAILED: " + "; ".join(failed) + f" (case dirs kept under {suite.root})")
        return 1
    if not args.keep:
        shutil.rmtree(suite.root, ignore_errors=True)
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
