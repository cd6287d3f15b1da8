#!/usr/bin/python3
"""Pipelines in a real outpost-serve, and `outpost infer` (docs/pipelines.md, docs/cli.md).

Generated videos and folders of images (tests/tools/pipeline_media, OpenCV's
VideoWriter/imwrite: nothing downloaded) through a classification pipeline
(color_classifier: the top class is the frame's colour) and a detection
pipeline (box_detector: fixed boxes, present on red frames only), an HTTP
MJPEG stream served by the test on loopback, a camera that does not exist,
a model that does not fit the post-processing; pre-processing taken from
the model's config.yaml (box_detector: letterbox) with and without a
pipeline override, and FP16 models (FP16 input written by pre-processing,
FP16 outputs read by post-processing); results checked in the sinks (JSON
lines, the SQLite queue, a webhook) and in /metrics.

Environment: OUTPOST_SERVE_BIN, OUTPOST_CLI_BIN, OUTPOST_TEST_MODELS,
OUTPOST_PIPELINE_MEDIA_BIN.
"""

import http.server
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MEDIA = os.environ.get("OUTPOST_PIPELINE_MEDIA_BIN")
CLI = os.environ.get("OUTPOST_CLI_BIN")

CLS_COLOURS = ["red", "green", "blue"]
CLS_FRAMES = 9
DET_FRAMES = 6
# box_detector's boxes mapped back into a 1280x720 frame letterboxed into
# 64x64 (scale 0.05, 14 rows of border above): see scripts/gen_models.py.
DET_PERSON = [240.0, 0.0, 560.0, 280.0]
DET_CAR = [260.0, 0.0, 580.0, 300.0]


def media(*args):
    subprocess.run([MEDIA] + [str(a) for a in args], check=True)


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def metric(text, name, **labels):
    """The value of one sample, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"([a-z_]+)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(have.get(k) == v or (k == "le" and k in have and float(have[k]) == float(v))
               for k, v in labels.items()):
            return float(m.group(4))
    return None


class MjpegHandler(http.server.BaseHTTPRequestHandler):
    """multipart/x-mixed-replace JPEG frames, red and blue in turn, for a
    few seconds per connection; then the connection closes (a dropped
    stream the pipeline must reconnect to)."""

    frames = {}
    seconds = 1.5
    connections = 0

    def do_GET(self):
        type(self).connections += 1
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        end = time.monotonic() + self.seconds
        i = 0
        try:
            while time.monotonic() < end:
                jpeg = self.frames["red" if i % 2 == 0 else "blue"]
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                self.wfile.flush()
                i += 1
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


class WebhookHandler(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first request, then 200; keeps the bodies."""

    bodies = []
    calls = 0
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            type(self).calls += 1
            first = type(self).calls == 1
            if not first:
                type(self).bodies.append(json.loads(body))
        self.send_response(503 if first else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def serve_in_thread(handler):
    server = http.server.ThreadingHTTPServer((harness.HOST, 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


PIPELINES = {
    "cls_video": """
name: cls_video
source: {type: video, path: %(tmp)s/cls.avi}
model: color_classifier
postprocess: {type: classification, top_k: 3}
sinks:
  - {type: jsonl, path: %(tmp)s/out/cls_video.jsonl}
  - {type: queue, path: %(tmp)s/out/queue.db}
""",
    "cls_folder": """
name: cls_folder
source: {type: folder, path: %(tmp)s/images}
model: color_classifier
postprocess: {type: classification, top_k: 1}
sinks:
  - {type: jsonl, path: %(tmp)s/out/cls_folder.jsonl}
  - {type: webhook, url: "http://127.0.0.1:%(hook)d/results", retries: 3, backoff_ms: 20}
""",
    "det_video": """
name: det_video
source: {type: video, path: %(tmp)s/det.avi}
model: box_detector
preprocess: {resize: letterbox}
postprocess: {type: detection, confidence_threshold: 0.5, iou_threshold: 0.45}
sinks: [{type: jsonl, path: %(tmp)s/out/det_video.jsonl}]
""",
    # No preprocess section: box_detector's config.yaml letterboxes.
    "det_folder": """
name: det_folder
source: {type: folder, path: %(tmp)s/det_images}
model: box_detector
postprocess: {type: detection, confidence_threshold: 0.5}
sinks: [{type: jsonl, path: %(tmp)s/out/det_folder.jsonl}]
""",
    # The pipeline's resize overrides the model config's.
    "det_stretch": """
name: det_stretch
source: {type: folder, path: %(tmp)s/det_images}
model: box_detector
preprocess: {resize: stretch}
postprocess: {type: detection, confidence_threshold: 0.5}
sinks: [{type: jsonl, path: %(tmp)s/out/det_stretch.jsonl}]
""",
    "det_fp16": """
name: det_fp16
source: {type: video, path: %(tmp)s/det.avi}
model: box_detector_fp16
postprocess: {type: detection, confidence_threshold: 0.5, iou_threshold: 0.45}
sinks: [{type: jsonl, path: %(tmp)s/out/det_fp16.jsonl}]
""",
    "cls_fp16": """
name: cls_fp16
source: {type: video, path: %(tmp)s/cls.avi}
model: color_classifier_fp16
postprocess: {type: classification, top_k: 3}
sinks: [{type: jsonl, path: %(tmp)s/out/cls_fp16.jsonl}]
""",
    "camera": """
name: camera
source:
  type: camera
  path: /dev/video-outpost-e2e-missing
  reconnect: {initial_ms: 50, max_ms: 200}
model: color_classifier
postprocess: {type: classification}
sinks: [{type: jsonl, path: %(tmp)s/out/camera.jsonl}]
""",
    "stream": """
name: stream
source:
  type: url
  url: "http://127.0.0.1:%(mjpeg)d/stream.mjpg"
  reconnect: {initial_ms: 100, max_ms: 400}
  read_timeout_ms: 3000
model: color_classifier
postprocess: {type: classification, top_k: 1}
sinks: [{type: jsonl, path: %(tmp)s/out/stream.jsonl}]
""",
    "mismatch": """
name: mismatch
source: {type: video, path: %(tmp)s/cls.avi}
model: color_classifier
postprocess: {type: detection}
sinks: [{type: jsonl, path: %(tmp)s/out/mismatch.jsonl}]
""",
}

FILE_PIPELINES = ["cls_video", "cls_folder", "det_video", "det_folder", "det_stretch", "det_fp16",
                  "cls_fp16", "mismatch"]
MODELS = ["color_classifier", "box_detector", "color_classifier_fp16", "box_detector_fp16"]


@unittest.skipUnless(MEDIA and CLI, "needs OUTPOST_PIPELINE_MEDIA_BIN and OUTPOST_CLI_BIN")
class PipelinesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="outpost-e2e-pipelines-")
        tmp = cls.tmp
        media("video", f"{tmp}/cls.avi", 320, 240, 10, ",".join(CLS_COLOURS), CLS_FRAMES)
        media("video", f"{tmp}/det.avi", 1280, 720, 25, "red,blue", DET_FRAMES)
        os.makedirs(f"{tmp}/images")
        media("image", f"{tmp}/images/01-red.png", 64, 48, "red")
        media("image", f"{tmp}/images/02-green.jpg", 64, 48, "green")
        media("image", f"{tmp}/images/03-blue.png", 640, 480, "blue")
        media("image", f"{tmp}/images/04-red.bmp", 33, 17, "red")
        with open(f"{tmp}/images/05-corrupt.jpg", "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
        os.makedirs(f"{tmp}/det_images")
        media("image", f"{tmp}/det_images/a-red.png", 1280, 720, "red")
        media("image", f"{tmp}/det_images/b-grey.png", 1280, 720, "grey")
        media("image", f"{tmp}/det_images/c-red.jpg", 1280, 720, "red")
        for colour in ("red", "blue"):
            media("image", f"{tmp}/{colour}.jpg", 160, 120, colour)
            with open(f"{tmp}/{colour}.jpg", "rb") as f:
                MjpegHandler.frames[colour] = f.read()
        cls.mjpeg = serve_in_thread(MjpegHandler)
        cls.hook = serve_in_thread(WebhookHandler)
        flags = []
        for name, text in PIPELINES.items():
            path = f"{tmp}/{name}.yaml"
            with open(path, "w") as f:
                f.write(text % {"tmp": tmp, "hook": cls.hook.server_address[1],
                                "mjpeg": cls.mjpeg.server_address[1]})
            flags += ["--pipeline", path]
        server = harness.Server(models=MODELS, flags=flags)
        for model in MODELS:
            for f in ("config.yaml", "labels.txt"):
                shutil.copyfile(os.path.join(harness.test_models_dir(), model, f),
                                os.path.join(server.repo, model, f))
        try:
            cls.server = server.start()
        except BaseException:
            server.print_log()
            server.cleanup()
            raise
        # File pipelines end on their own; wait for all of them.
        try:
            cls.server.wait_until(
                lambda: all(metric(cls.server.metrics(), "outpost_pipeline_up", pipeline=p) == 0
                            for p in FILE_PIPELINES), 90, "the file pipelines to finish")
        except BaseException:
            cls.server.print_log()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.server.stop()
        finally:
            cls.server.cleanup()
            cls.mjpeg.shutdown()
            cls.hook.shutdown()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.addCleanup(self._log_on_failure)

    def _log_on_failure(self):
        outcome = getattr(self, "_outcome", None)
        errors = getattr(getattr(outcome, "result", None), "failures", []) + \
            getattr(getattr(outcome, "result", None), "errors", [])
        if any(test is self for test, _ in errors):
            self.server.print_log()

    def out(self, name):
        return read_jsonl(f"{self.tmp}/out/{name}.jsonl")

    def test_video_through_classification(self):
        results = self.out("cls_video")
        self.assertEqual(len(results), CLS_FRAMES, results)
        for i, r in enumerate(results):
            self.assertEqual(r["pipeline"], "cls_video")
            self.assertEqual(r["model"], "color_classifier")
            self.assertEqual(r["model_version"], "1")
            self.assertEqual(r["frame"]["index"], i)
            self.assertAlmostEqual(r["frame"]["position_ms"], i * 100.0, delta=1.0)
            self.assertEqual((r["frame"]["width"], r["frame"]["height"]), (320, 240))
            self.assertIsInstance(r["frame"]["timestamp_ms"], int)
            self.assertEqual([c["label"] for c in r["classes"]][0], CLS_COLOURS[i % 3])
            self.assertEqual(len(r["classes"]), 3)
            self.assertGreater(r["classes"][0]["score"], 0.99)
            self.assertEqual(set(r["latency_ms"]), {"decode", "queue", "preprocess",
                                                    "inference_queue", "inference",
                                                    "postprocess", "total"})
        # The same results, durably queued for upstream.
        db = sqlite3.connect(f"{self.tmp}/out/queue.db")
        rows = [json.loads(b) for (b,) in db.execute("SELECT body FROM results ORDER BY id")]
        db.close()
        self.assertEqual([r["frame"]["index"] for r in rows], list(range(CLS_FRAMES)))
        self.assertEqual(rows[4]["classes"][0]["label"], "green")

    def test_folder_through_classification_with_a_corrupt_image(self):
        results = self.out("cls_folder")
        self.assertEqual(len(results), 5, results)
        ok = [r for r in results if "error" not in r]
        errors = [r for r in results if "error" in r]
        self.assertEqual([os.path.basename(r["frame"]["source"]) for r in ok],
                         ["01-red.png", "02-green.jpg", "03-blue.png", "04-red.bmp"])
        self.assertEqual([r["classes"][0]["label"] for r in ok], ["red", "green", "blue", "red"])
        self.assertEqual([len(r["classes"]) for r in ok], [1, 1, 1, 1])
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["error"]["stage"], "decode")
        self.assertIn("05-corrupt.jpg", errors[0]["error"]["message"])
        # The webhook refused the first POST (503); the retry delivered it.
        bodies = sorted(WebhookHandler.bodies, key=lambda r: r["frame"]["index"])
        self.assertEqual(len(bodies), 5)
        self.assertEqual(WebhookHandler.calls, 6)
        self.assertEqual(bodies[0]["classes"][0]["label"], "red")

    def check_detections(self, results, red):
        for r, is_red in zip(results, red):
            if not is_red:
                self.assertEqual(r["detections"], [], r)
                continue
            d = r["detections"]
            self.assertEqual([x["label"] for x in d], ["person", "car"], r)
            self.assertEqual([x["class"] for x in d], [0, 1])
            self.assertEqual(d[0]["box"], DET_PERSON)
            self.assertEqual(d[1]["box"], DET_CAR)
            self.assertAlmostEqual(d[0]["score"], 0.9, delta=0.03)
            self.assertAlmostEqual(d[1]["score"], 0.85, delta=0.03)

    def test_video_through_detection(self):
        results = self.out("det_video")
        self.assertEqual(len(results), DET_FRAMES)
        self.assertEqual([r["frame"]["width"] for r in results], [1280] * DET_FRAMES)
        self.check_detections(results, [i % 2 == 0 for i in range(DET_FRAMES)])
        self.assertEqual(sum(len(r["detections"]) for r in results), DET_FRAMES)

    def test_folder_through_detection(self):
        results = self.out("det_folder")
        self.assertEqual(len(results), 3)
        self.check_detections(results, [True, False, True])

    def test_preprocessing_from_the_model_config_and_a_pipeline_override(self):
        meta = self.server.get("/v2/models/box_detector").json()
        self.assertEqual(meta["preprocess"], {"resize": "letterbox"})
        self.assertNotIn("preprocess", self.server.get("/v2/models/color_classifier").json())
        # det_folder (no section) letterboxes: test_folder_through_detection.
        # det_stretch stretches 1280x720 into 64x64: x by 20, y by 11.25.
        results = self.out("det_stretch")
        self.assertEqual(len(results), 3)
        self.assertEqual([len(r["detections"]) for r in results], [2, 0, 2])
        self.assertEqual(results[0]["detections"][0]["box"], [240.0, 135.0, 560.0, 315.0])

    def test_fp16_models_through_detection_and_classification(self):
        meta = self.server.get("/v2/models/box_detector_fp16").json()
        self.assertEqual([i["datatype"] for i in meta["inputs"] + meta["outputs"]], ["FP16", "FP16"])
        results = self.out("det_fp16")
        self.assertEqual(len(results), DET_FRAMES)
        self.check_detections(results, [i % 2 == 0 for i in range(DET_FRAMES)])
        results = self.out("cls_fp16")
        self.assertEqual(len(results), CLS_FRAMES)
        for i, r in enumerate(results):
            self.assertEqual(r["model"], "color_classifier_fp16")
            self.assertEqual(r["classes"][0]["label"], CLS_COLOURS[i % 3])
            self.assertGreater(r["classes"][0]["score"], 0.99)

    def test_a_model_that_does_not_fit_stops_the_pipeline_clearly(self):
        results = self.out("mismatch")
        self.assertEqual(len(results), 1, results)
        self.assertEqual(results[0]["error"]["stage"], "model")
        self.assertIn("model output 'probs' is FP32 [-1,3]: detection (yolov5) needs",
                      results[0]["error"]["message"])
        self.assertIn("pipeline 'mismatch' stopped: model 'color_classifier' version 1 does not "
                      "fit", self.server.log_text())
        text = self.server.metrics()
        self.assertEqual(metric(text, "outpost_pipeline_up", pipeline="mismatch"), 0)
        self.assertEqual(metric(text, "outpost_pipeline_errors_total", pipeline="mismatch",
                                stage="model"), 1)

    def test_a_missing_camera_is_reported_and_retried_with_backoff(self):
        self.server.wait_until(
            lambda: metric(self.server.metrics(), "outpost_pipeline_source_reconnects_total",
                           pipeline="camera") >= 4, 10, "camera reconnect attempts")
        text = self.server.metrics()
        self.assertEqual(metric(text, "outpost_pipeline_up", pipeline="camera"), 1)
        self.assertEqual(metric(text, "outpost_pipeline_source_connected", pipeline="camera"), 0)
        results = self.out("camera")
        self.assertEqual(len(results), 1, results)  # reported once per outage, not per retry
        self.assertEqual(results[0]["error"]["stage"], "source")
        self.assertIn("camera /dev/video-outpost-e2e-missing is not present (unplugged?); "
                      "retrying with backoff", results[0]["error"]["message"])
        self.assertEqual(self.server.log_text().count("video-outpost-e2e-missing is not present"), 1)

    def test_an_http_mjpeg_stream_that_drops_is_reconnected(self):
        # Each connection lasts 1.5 s: after two, the pipeline has reconnected.
        self.server.wait_until(lambda: MjpegHandler.connections >= 2, 30, "a second connection")
        self.server.wait_until(lambda: len(self.out("stream")) >= 10, 30, "stream results")
        results = [r for r in self.out("stream") if "error" not in r]
        labels = {r["classes"][0]["label"] for r in results}
        self.assertEqual(labels, {"red", "blue"})
        text = self.server.metrics()
        self.assertGreaterEqual(metric(text, "outpost_pipeline_source_reconnects_total",
                                       pipeline="stream"), 1)
        lost = [r for r in self.out("stream") if "error" in r]
        self.assertTrue(any("stopped delivering frames; reconnecting" in r["error"]["message"]
                            for r in lost), lost)

    def test_metrics(self):
        text = self.server.metrics()
        self.assertEqual(metric(text, "outpost_pipeline_frames_total", pipeline="cls_video"),
                         CLS_FRAMES)
        self.assertEqual(metric(text, "outpost_pipeline_results_total", pipeline="cls_folder"), 4)
        self.assertEqual(metric(text, "outpost_pipeline_errors_total", pipeline="cls_folder",
                                stage="decode"), 1)
        self.assertEqual(metric(text, "outpost_pipeline_frames_dropped_total",
                                pipeline="cls_video", reason="queue_full"), 0)
        # One top-1 confidence per classified frame; every detection's score.
        self.assertEqual(metric(text, "outpost_pipeline_score_count", pipeline="cls_video",
                                kind="confidence"), CLS_FRAMES)
        self.assertEqual(metric(text, "outpost_pipeline_score_bucket", pipeline="det_video",
                                kind="confidence", le="0.8"), 0)
        self.assertEqual(metric(text, "outpost_pipeline_score_count", pipeline="det_video",
                                kind="confidence"), DET_FRAMES)
        for stage in ("decode", "queue", "preprocess", "inference_queue", "inference",
                      "postprocess", "sink", "total"):
            self.assertEqual(metric(text, "outpost_pipeline_stage_latency_seconds_count",
                                    pipeline="det_video", stage=stage),
                             DET_FRAMES, stage)
        for name in ("outpost_pipeline_source_fps", "outpost_pipeline_fps"):
            self.assertIsNotNone(metric(text, name, pipeline="stream"), name)
        # Pipeline frames go through the models' schedulers: the model
        # metrics count them beside API requests.
        self.assertGreaterEqual(metric(text, "outpost_inference_requests_total",
                                       model="box_detector", status="success"),
                                DET_FRAMES + 3)
        # And an API request to the same model still works beside them.
        resp = self.server.get("/v2/models/color_classifier/ready")
        self.assertEqual(resp.status, 200)

    @unittest.skipUnless(os.path.exists("/usr/bin/promtool"), "needs promtool (prometheus)")
    def test_promtool_accepts_the_metrics(self):
        result = subprocess.run(["/usr/bin/promtool", "check", "metrics"],
                                input=self.server.metrics().encode(), capture_output=True,
                                timeout=30)
        self.assertEqual(result.returncode, 0, (result.stdout + result.stderr).decode())


@unittest.skipUnless(MEDIA and CLI, "needs OUTPOST_PIPELINE_MEDIA_BIN and OUTPOST_CLI_BIN")
class BadPipelineFileTest(unittest.TestCase):
    def test_the_runtime_refuses_to_start_with_a_broken_pipeline_file(self):
        tmp = tempfile.mkdtemp(prefix="outpost-e2e-badpipeline-")
        self.addCleanup(shutil.rmtree, tmp, True)
        os.makedirs(f"{tmp}/models")
        path = f"{tmp}/bad.yaml"
        with open(path, "w") as f:
            f.write("name: bad\nsource: {type: cam, path: /dev/video0}\nmodel: m\n"
                    "postprocess: {type: raw}\nsinks: [{type: stdout}]\n")
        p = subprocess.run([harness.serve_binary(), "--model-repository", f"{tmp}/models",
                            "--http-port", "0", "--pipeline", path],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(f"--pipeline {path}: {path}: key 'source.type': must be one of image, "
                      "folder, video, camera, url; got 'cam'", p.stdout + p.stderr)


@unittest.skipUnless(MEDIA and CLI, "needs OUTPOST_PIPELINE_MEDIA_BIN and OUTPOST_CLI_BIN")
class InferCliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="outpost-e2e-infer-")
        media("image", f"{cls.tmp}/red.png", 50, 50, "red")
        media("image", f"{cls.tmp}/blue.jpg", 50, 50, "blue")
        media("video", f"{cls.tmp}/clip.avi", 1280, 720, 25, "red,blue", 4)
        with open(f"{cls.tmp}/broken.jpg", "wb") as f:
            f.write(b"nope")
        cls.models = harness.test_models_dir()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def infer(self, *args):
        p = subprocess.run([CLI, "infer"] + list(args), capture_output=True, text=True, timeout=60)
        lines = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
        return p.returncode, lines, p.stderr

    def test_an_image_with_the_models_labels(self):
        code, lines, err = self.infer("--model", f"{self.models}/color_classifier",
                                      "--image", f"{self.tmp}/red.png", "--top-k", "2")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(lines), 1)
        self.assertEqual([c["label"] for c in lines[0]["classes"]], ["red", "green"])
        self.assertEqual(lines[0]["frame"]["source"], f"{self.tmp}/red.png")

    def test_a_model_file_and_a_video_through_detection(self):
        code, lines, err = self.infer("--model", f"{self.models}/box_detector/1/model.onnx",
                                      "--video", f"{self.tmp}/clip.avi", "--task", "detection",
                                      "--resize", "letterbox", "--threshold", "0.5")
        self.assertEqual(code, 0, err)
        self.assertEqual(len(lines), 4)
        self.assertEqual([len(r["detections"]) for r in lines], [2, 0, 2, 0])
        self.assertEqual(lines[0]["detections"][0]["box"], DET_PERSON)
        self.assertEqual(lines[0]["detections"][0]["label"], "person")  # labels from config.yaml

    def test_preprocessing_from_the_model_config(self):
        # No --resize: box_detector's config.yaml (beside the version folder) letterboxes.
        code, lines, err = self.infer("--model", f"{self.models}/box_detector_fp16/1/model.onnx",
                                      "--video", f"{self.tmp}/clip.avi", "--task", "detection",
                                      "--threshold", "0.5")
        self.assertEqual(code, 0, err)
        self.assertEqual([len(r["detections"]) for r in lines], [2, 0, 2, 0])
        self.assertEqual(lines[0]["detections"][0]["box"], DET_PERSON)
        # --resize overrides it.
        code, lines, err = self.infer("--model", f"{self.models}/box_detector",
                                      "--video", f"{self.tmp}/clip.avi", "--task", "detection",
                                      "--threshold", "0.5", "--resize", "stretch")
        self.assertEqual(code, 0, err)
        self.assertEqual(lines[0]["detections"][0]["box"], [240.0, 135.0, 560.0, 315.0])

    def test_a_folder_to_a_file(self):
        out = f"{self.tmp}/out.jsonl"
        folder = f"{self.tmp}/folder"
        os.makedirs(folder, exist_ok=True)
        shutil.copy(f"{self.tmp}/red.png", folder)
        shutil.copy(f"{self.tmp}/blue.jpg", folder)
        code, lines, err = self.infer("--model", f"{self.models}/color_classifier",
                                      "--images", folder, "--output", out)
        self.assertEqual(code, 0, err)
        self.assertEqual(lines, [])
        self.assertEqual([r["classes"][0]["label"] for r in read_jsonl(out)], ["blue", "red"])

    def test_bad_input_exit_codes(self):
        code, lines, err = self.infer("--model", f"{self.models}/color_classifier",
                                      "--image", f"{self.tmp}/broken.jpg")
        self.assertEqual(code, 1, err)
        self.assertEqual(lines[0]["error"]["stage"], "decode")
        self.assertIn("1 frame(s) failed", err)
        code, lines, err = self.infer("--model", f"{self.models}/color_classifier",
                                      "--image", f"{self.tmp}/red.png", "--task", "detection")
        self.assertEqual(code, 2, err)
        self.assertIn("does not fit the pipeline: model output 'probs'", err)
        code, _, err = self.infer("--model", f"{self.tmp}/no-such-model", "--image",
                                  f"{self.tmp}/red.png")
        self.assertEqual(code, 3, err)
        self.assertIn("no such file or folder", err)
        code, _, err = self.infer("--model", f"{self.models}/color_classifier",
                                  "--video", f"{self.tmp}/broken.jpg")
        self.assertEqual(code, 3, err)
        self.assertIn("broken.jpg: no frame could be decoded (corrupt file?)", err)
        code, _, err = self.infer("--model", f"{self.models}/color_classifier")
        self.assertEqual(code, 2, err)
        self.assertIn("give one of --image, --images or --video", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
