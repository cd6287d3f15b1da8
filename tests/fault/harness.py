"""Building blocks of the fault-injection suite (Python 3 stdlib only).

Real processes, real files: the real `outpost` CLI builds and signs the
bundles, the real `outpost-agent` installs them and supervises a real
`outpost-serve`, and a small HTTP server in this process plays the hub's
artifact store (Range requests, cut connections, outages).

Environment (set by ctest, see tests/CMakeLists.txt):
  OUTPOST_AGENT_BIN, OUTPOST_SERVE_BIN, OUTPOST_CLI_BIN   the built binaries
  OUTPOST_TEST_MODELS   the generated test models (scripts/gen_models.py)
  OUTPOST_TEST_HOOKS    ON/OFF: whether the binaries were built with the
                        fault hooks (OUTPOST_CRASH_AT, OUTPOST_FAIL_WRITE_AT)
"""

import errno
import hashlib
import http.client
import http.server
import io
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import tarfile
import threading
import time

HOST = "127.0.0.1"
INPUT = [1.0, 2.0, 3.0, 4.0]
AT_REST = ("idle", "committed", "rolled_back")


def env_path(name):
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set: run through ctest (ctest -L fault) or export it")
    return value


class Binaries:
    def __init__(self):
        self.agent = env_path("OUTPOST_AGENT_BIN")
        self.serve = env_path("OUTPOST_SERVE_BIN")
        self.cli = env_path("OUTPOST_CLI_BIN")
        self.models = env_path("OUTPOST_TEST_MODELS")


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    return p.stdout


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- bundles ---------------------------------------------------------------

def read_bundle(path):
    """[(TarInfo, bytes or None)] of a .tar.zst bundle, in archive order."""
    raw = subprocess.run(["zstd", "-d", "-q", "-c", path], capture_output=True, check=True).stdout
    out = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as t:
        for m in t.getmembers():
            out.append((m, t.extractfile(m).read() if m.isfile() else None))
    return out


def write_bundle(path, members):
    """Writes [(TarInfo, bytes or None)] as a pax tar compressed with zstd."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            info = _copy_info(info)
            if data is not None:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                info.size = 0
                t.addfile(info)
    subprocess.run(["zstd", "-q", "-f", "-3", "-o", path], input=buf.getvalue(), check=True)


def _copy_info(info):
    c = tarfile.TarInfo(info.name)
    for a in ("size", "mtime", "mode", "type", "linkname", "uid", "gid", "uname", "gname"):
        setattr(c, a, getattr(info, a))
    c.pax_headers = {}
    return c


def file_info(name, mode=0o644, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.type = kind
    info.linkname = linkname
    info.mtime = 1700000000
    return info


def bundle_manifest(path):
    members = read_bundle(path)
    assert members[0][0].name == "manifest.json", f"{path}: manifest.json is not first"
    return json.loads(members[0][1])


# --- the hub's artifact store ----------------------------------------------

class Hub:
    """A throw-away HTTP server for bundles, with faults on demand.

    files: {url path: bytes}. Behaviour knobs (set before the agent asks):
      cut_after      first GET only: announce the whole body, send this many
                     bytes, close the connection
      ignore_range   answer 200 with the whole body even to a Range request
      stall_after    first GET only: send this many bytes, then hold the
                     connection open silently for `stall_seconds`
      die_after      send this many bytes, then the whole server goes away
                     (listening socket closed); back after `back_after` s
                     (None: never)
      fail_first     answer the first N GETs with 503
      rate           bytes per second per response (None: unthrottled)
    Every GET is logged as {"path", "range_start", "status", "sent"}.
    """

    def __init__(self, files):
        self.files = dict(files)
        self.cut_after = None
        self.ignore_range = False
        self.stall_after = None
        self.stall_seconds = 0.0
        self.die_after = None
        self.back_after = None
        self.fail_first = 0
        self.rate = None
        self.log = []
        self.lock = threading.Lock()
        self.gets = 0
        self.port = 0
        self.server = None
        self.thread = None
        self.down = False
        self._start()

    def url(self, path):
        return f"http://{HOST}:{self.port}{path}"

    def _start(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                hub._serve(self)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((HOST, self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="hub", daemon=True)
        self.thread.start()
        self.down = False

    def go_away(self):
        if self.server is None:
            return
        server, self.server = self.server, None
        self.down = True
        server.shutdown()
        server.server_close()

    def come_back(self):
        # The same port: the agent keeps its URL.
        for _ in range(100):
            try:
                self._start()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"hub: cannot listen on port {self.port} again")

    def stop(self):
        self.go_away()

    def _serve(self, req):
        with self.lock:
            self.gets += 1
            n = self.gets
        body = self.files.get(req.path)
        entry = {"path": req.path, "range_start": None, "status": 0, "sent": 0}
        self.log.append(entry)
        if body is None:
            entry["status"] = 404
            req.send_error(404)
            return
        if n <= self.fail_first:
            entry["status"] = 503
            req.send_response(503)
            req.send_header("Retry-After", "0")
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        start = 0
        rng = req.headers.get("Range")
        if rng and rng.startswith("bytes=") and not self.ignore_range:
            start = int(rng[len("bytes="):].split("-")[0])
            entry["range_start"] = start
            if start >= len(body):
                entry["status"] = 416
                req.send_response(416)
                req.send_header("Content-Range", f"bytes */{len(body)}")
                req.send_header("Content-Length", "0")
                req.end_headers()
                return
            req.send_response(206)
            req.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            entry["status"] = 206
        else:
            req.send_response(200)
            entry["status"] = 200
        req.send_header("Content-Length", str(len(body) - start))
        req.send_header("Accept-Ranges", "bytes")
        req.end_headers()
        limit, after = len(body) - start, None
        if self.cut_after is not None:
            limit, after, self.cut_after = min(limit, self.cut_after), "cut", None
        elif self.stall_after is not None:
            limit, after, self.stall_after = min(limit, self.stall_after), "stall", None
        elif self.die_after is not None:
            limit, after, self.die_after = min(limit, self.die_after), "die", None
        chunk = 64 * 1024
        sent = 0
        t0 = time.monotonic()
        try:
            while sent < limit:
                piece = body[start + sent:start + min(limit, sent + chunk)]
                req.wfile.write(piece)
                sent += len(piece)
                entry["sent"] = sent
                if self.rate:
                    ahead = sent / self.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            req.wfile.flush()
        except OSError:
            return
        if after == "stall":
            time.sleep(self.stall_seconds)
        if after in ("cut", "stall", "die"):
            entry["cut"] = after
            req.close_connection = True
            try:
                req.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if after == "die":
            threading.Thread(target=self._outage, daemon=True).start()

    def _outage(self):
        self.go_away()
        if self.back_after is not None:
            time.sleep(self.back_after)
            self.come_back()


# --- a device: state dir + agent processes ---------------------------------

class Device:
    """One simulated device: a state directory, a bundle folder, a trust
    store, and the outpost-agent processes run on them (one at a time)."""

    AGENT_FLAGS = [
        "--ready-timeout", "20", "--self-test-timeout", "10", "--soak", "0.5",
        "--poll-interval", "0.2", "--max-attempts", "3", "--restart-backoff", "0.1",
        "--crash-loop-exits", "3", "--crash-loop-window", "60", "--stop-grace", "3",
        "--download-retries", "4", "--download-backoff", "0.2", "--download-backoff-max", "0.5",
    ]

    def __init__(self, bins, root, trust_dir):
        self.bins = bins
        self.root = root
        self.state = os.path.join(root, "state")
        self.bundles = os.path.join(root, "bundles")
        self.logs = os.path.join(root, "agent-logs")
        self.trust = trust_dir
        for d in (self.bundles, self.logs, self.state):
            os.makedirs(d, exist_ok=True)
        self.proc = None
        self.runs = 0
        self.log_path = None

    # processes

    def start(self, source=None, env=None, flags=()):
        """Starts `outpost-agent run`. source: None (the bundle folder) or
        (url, sha256, size)."""
        assert self.proc is None or self.proc.poll() is not None, "agent already running"
        # Per-run flags replace the defaults of the same name.
        flags = list(flags)
        defaults = []
        for i in range(0, len(self.AGENT_FLAGS), 2):
            if self.AGENT_FLAGS[i] not in flags:
                defaults += self.AGENT_FLAGS[i:i + 2]
        cmd = [self.bins.agent, "run", "--state-dir", self.state, "--trust-dir", self.trust,
               "--serve-binary", self.bins.serve] + defaults
        if source is None:
            cmd += ["--bundle-dir", self.bundles]
        else:
            url, digest, size = source
            cmd += ["--bundle-url", url, "--bundle-sha256", digest, "--bundle-size", str(size)]
        cmd += flags
        e = {k: v for k, v in os.environ.items()
             if k not in ("OUTPOST_CRASH_AT", "OUTPOST_FAIL_WRITE_AT")}
        e.update(env or {})
        self.runs += 1
        self.log_path = os.path.join(self.logs, f"agent-{self.runs}.log")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=e,
                                     start_new_session=True)
        log.close()
        return self.proc

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=20):
        """SIGTERM, then SIGKILL; returns the exit code (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=40):
        out = []
        for i in range(1, self.runs + 1):
            path = os.path.join(self.logs, f"agent-{i}.log")
            try:
                with open(path, "rb") as f:
                    lines = f.read().decode(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"--- agent run {i} ---")
            out.extend(lines[-n:])
        return "\n".join(out)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, TypeError):
            return ""

    # state

    def state_file(self):
        """state.json as a dict (None while missing or mid-write)."""
        try:
            with open(os.path.join(self.state, "state.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def status(self):
        """What `outpost-agent status` reports (the agent's own word)."""
        p = subprocess.run([self.bins.agent, "status", "--state-dir", self.state],
                           capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            raise AssertionError(f"outpost-agent status: exit {p.returncode}: {p.stderr}")
        return json.loads(p.stdout)

    def wait_for(self, predicate, timeout, what, fail_on_exit=True):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.state_file()
            if s is not None and predicate(s):
                return s
            if fail_on_exit and self.proc is not None and self.proc.poll() is not None:
                s = self.state_file()
                if s is not None and predicate(s):
                    return s
                raise AssertionError(f"agent exited ({self.proc.returncode}) while waiting for "
                                     f"{what}; state {summary(s)}")
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                             f"state {summary(self.state_file())}")

    def current_slot(self):
        try:
            target = os.readlink(os.path.join(self.state, "current"))
        except OSError:
            return ""
        return os.path.basename(target.rstrip("/"))

    def slot_dir(self, slot):
        return os.path.join(self.state, "slots", slot)

    # serving

    def infer(self, timeout=20):
        """add_one([1, 2, 3, 4]) from the runtime behind `current`, waiting
        until it is ready. Returns (slot, outputs)."""
        deadline = time.monotonic() + timeout
        last = "no port file"
        while time.monotonic() < deadline:
            slot = self.current_slot()
            try:
                with open(os.path.join(self.state, "current", "port.json")) as f:
                    port = json.load(f)["http"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.05)
                continue
            try:
                code, _ = http_call(port, "GET", "/v2/health/ready")
                if code == 200:
                    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32",
                                                   "shape": [1, 4], "data": INPUT}]})
                    code, reply = http_call(port, "POST", "/v2/models/add_one/infer", body)
                    if code != 200:
                        raise AssertionError(f"infer on slot {slot}: HTTP {code} {reply[:300]!r}")
                    return slot, json.loads(reply)["outputs"][0]["data"]
                last = f"ready: HTTP {code}"
            except OSError as e:
                last = str(e)
            time.sleep(0.05)
        raise AssertionError(f"nothing serves behind {self.state}/current ({last})")


def http_call(port, method, path, body=None, timeout=5):
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def summary(s):
    if s is None:
        return "<unreadable>"
    u = s.get("update", {})
    c = s.get("committed") or {}
    return (f"{s.get('state')} committed={c.get('release')}@{c.get('slot')} "
            f"update={u.get('release')} reason={u.get('reason')!r} "
            f"msg={u.get('message', '')[:200]!r}")


def fill_disk(path):
    """Writes `path` until the filesystem is full (ENOSPC). Returns bytes written."""
    n = 0
    block = b"\0" * (64 * 1024)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                n += f.write(block)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
        try:  # the last pages
            while True:
                n += f.write(b"\0" * 512)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return n


def check_slot(slot_dir, manifest):
    """Problems of an unpacked slot against its release's manifest: every
    file present with its size and SHA-256, nothing else but port.json and
    the verified manifest.json the agent keeps beside the payload."""
    problems = []
    want = {f["path"]: f for f in manifest["files"]}
    seen = set()
    for dirpath, dirnames, filenames in os.walk(slot_dir):
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, slot_dir)
            if rel in ("port.json", "manifest.json"):
                continue
            seen.add(rel)
            f = want.get(rel)
            if f is None:
                problems.append(f"unexpected file {rel}")
                continue
            if os.path.islink(full) or not os.path.isfile(full):
                problems.append(f"{rel} is not a regular file")
                continue
            if os.path.getsize(full) != f["size"]:
                problems.append(f"{rel}: size {os.path.getsize(full)}, manifest {f['size']}")
            elif sha256_file(full) != f["sha256"]:
                problems.append(f"{rel}: SHA-256 differs from the manifest")
    for rel in want:
        if rel not in seen:
            problems.append(f"missing {rel}")
    return problems


def tmpfs_possible(probe_dir):
    """True when a tmpfs can be mounted here (root in a private mount namespace)."""
    os.makedirs(probe_dir, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe_dir],
                       capture_output=True)
    if p.returncode != 0:
        return False
    subprocess.run(["umount", probe_dir], capture_output=True)
    return True


def mount_tmpfs(path, size_bytes):
    os.makedirs(path, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", path])


def unmount(path):
    subprocess.run(["umount", "-l", path], capture_output=True)


def copy_bundle(src, dest_dir, name=None):
    dest = os.path.join(dest_dir, name or os.path.basename(src))
    tmp = dest + ".copying"
    shutil.copyfile(src, tmp)
    os.rename(tmp, dest)  # the agent never sees half a file under *.tar.zst
    return dest
