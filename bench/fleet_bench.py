#!/usr/bin/env python3
"""Fleet figures of issues 3 and 4, measured on real processes on loopback.
Python stdlib only; reuses the e2e harness (tests/e2e/fleet.py).

Phases (--phases, comma-separated; all by default):

  idle     One hub and one real outpost-agent enrolled with DEFAULT agent
           settings (no interval flags), release r1 committed first, then
           idle. A byte-counting TCP proxy sits between agent and hub (the
           bootstrap file's hub_url points at it; TLS passes through it
           untouched), so every byte the device sends and receives is counted
           over --idle-window seconds and extrapolated to an hour, broken down
           into long polls, heartbeats (telemetry), status reports and TLS
           handshakes; TCP/IP headers are estimated from the kernel's segment
           counters of the proxy's agent-side sockets (TCP_INFO) x 52 bytes.
           In the same window: idle RSS and CPU of outpost-agent itself (not
           its outpost-serve child) in hub mode, in local-folder mode, and in
           hub mode with the hub unreachable, and of Debian's `mender daemon`
           (mender-client) pointed at an unreachable loopback server, when
           `mender` is installed (skipped with a message otherwise).
  scale    One hub (SQLite, then PostgreSQL: --scale-db) and --devices
           simulated idle devices: enrolled through the real device API
           (one bootstrap token with uses=N), each keeping a long poll open
           (GET /desired?wait=W with If-None-Match, then the updater's sleep,
           W and the intervals being the measured agent's own defaults, read
           from `outpost-agent run --help`) and posting a telemetry batch of
           the agent's shape every --telemetry-interval (uncompressed JSON,
           like the agent's), over persistent HTTPS
           connections from one asyncio process. r1 is rolled out to them
           first (waves 1, 10%, 100%; they report `committed` without
           downloading). Hub RSS and CPU over --scale-window seconds of steady
           idling, with the simulator's own CPU (and PostgreSQL's) beside it.
  rollout  Five real devices at default agent settings (soak, long poll,
           report interval) and a hub at default settings: push -> rollout
           [1, 50%, 100%] with a 1 s rollout soak -> completed, for
           --rollout-runs releases (median); and the figure of
           tests/e2e/test_fleet.py's test_1 (agents with test intervals).

  bench/fleet_bench.py --build build-lead [--phases idle,scale,rollout]
                       [--idle-window S] [--devices 1000] [--scale-window S]
                       [--scale-db sqlite,postgres] [--rollout-runs 3]
                       [--write-results] [--json FILE]

It takes about an hour with the defaults and the agent's defaults of this
revision (heartbeat every 600 s: idle ~23 min, scale ~2x11, rollout ~7), so
`make bench` does not run it. --write-results replaces this script's
sections of bench/RESULTS.md (fleet_idle, fleet_scale, fleet_rollout, between
their markers; bench/bench.py keeps them), only those of the phases run.

Every process it starts is tracked by PID and stopped by PID. The mender
comparison needs two files at paths the Debian package hard-codes
(/etc/mender/artifact_info, /usr/share/mender/identity/mender-device-identity):
they are created only if absent, and removed afterwards.
"""

import argparse
import asyncio
import datetime
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import fleet  # noqa: E402

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEADER_BYTES = 52  # IPv4 20 + TCP 20 + timestamps option 12, per segment
RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
# The agent's defaults as of revision dd9e4bc, for results saved without them;
# a run reads the measured binary's own from `outpost-agent run --help`.
OLD_DEFAULTS = {"hub-wait": 120, "report-interval": 10, "telemetry-interval": 300, "soak": 30,
                "poll-interval": 5}
HUB_RECHECK_S = 5  # outpost-hub serve --long-poll-recheck default (src/hub/hub_main.cc)


def agent_defaults(agent_bin):
    """Defaults of the agent's interval flags, from its --help (CLI11 prints
    them as `--flag TYPE...=VALUE`)."""
    text = subprocess.run([agent_bin, "run", "--help"], capture_output=True, text=True).stdout
    out = {}
    for name in OLD_DEFAULTS:
        m = re.search(rf"--{name} [^\n=]*=([0-9.]+)", text)
        if m is None:
            sys.exit(f"cannot read the default of --{name} from `{agent_bin} run --help`")
        out[name] = float(m.group(1))
    return out


def fmt_s(x):
    return f"{x:g} s"


def log(msg):
    print(f"[fleet-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- /proc

def proc_stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # [0] is field 3 (state)


def proc_cpu_s(pid, children=False):
    """utime + stime (and cutime + cstime: reaped children) in seconds."""
    f = proc_stat_fields(pid)
    ticks = int(f[11]) + int(f[12])
    if children:
        ticks += int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def proc_pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def top_mappings(pid, n=10):
    """The largest contributors to a process's RSS, by mapped file (smaps)."""
    rss = {}
    name = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split()
                if first and "-" in first[0] and len(first) >= 5 and ":" not in first[0]:
                    name = first[5] if len(first) > 5 else "[anon]"
                elif line.startswith("Rss:"):
                    rss[name] = rss.get(name, 0) + int(line.split()[1])
    except OSError:
        return []
    return sorted(rss.items(), key=lambda kv: -kv[1])[:n]


def children_of(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(proc_stat_fields(int(entry))[1]) == pid:
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            pass
    return out


def system_busy_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def loadavg():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def raise_fd_limit(want=16384):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class RssSampler(threading.Thread):
    """VmRSS of named processes every `interval` seconds."""

    def __init__(self, pids, interval=5.0, pss=None):
        super().__init__(daemon=True)
        self.pids = dict(pids)
        self.pss = pss or {}  # name -> callable returning kB (summed PSS of a process group)
        self.samples = {name: [] for name in list(self.pids) + list(self.pss)}
        self.parts = {name: {"RssAnon": [], "RssFile": [], "Pss": []} for name in self.pids}
        self.interval = interval
        self.stopping = threading.Event()

    def sample(self):
        for name, pid in self.pids.items():
            try:
                kb = proc_status(pid, "VmRSS")
                for part, values in self.parts[name].items():
                    values.append(proc_pss_kb(pid) if part == "Pss" else
                                  proc_status(pid, part) or 0)
            except OSError:
                kb = None
            if kb is not None:
                self.samples[name].append(kb)
        for name, fn in self.pss.items():
            self.samples[name].append(fn())

    def run(self):
        while not self.stopping.is_set():
            self.sample()
            self.stopping.wait(self.interval)

    def stop(self):
        self.stopping.set()
        self.join(timeout=10)
        self.sample()
        out = {name: {"median_kb": statistics.median(v), "min_kb": min(v), "max_kb": max(v),
                      "n": len(v)} for name, v in self.samples.items() if v}
        for name, parts in self.parts.items():
            for part, values in parts.items():
                if values and name in out:
                    out[name][part + "_kb"] = statistics.median(values)
        return out


# ---------------------------------------------------------------- processes

class DefaultHub(fleet.Hub):
    """fleet.Hub with the hub's own default intervals (the e2e harness passes
    test intervals: rollout tick 0.2 s, long-poll recheck 0.5 s, ...)."""

    def start(self, port=0):
        port_file = os.path.join(self.dir, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [self.bins.hub, "serve", "--data", self.data, "--port", str(port),
                 "--port-file", port_file] + self.db_args(),
                stdout=log_file, stderr=subprocess.STDOUT)

        def read_port():
            if not os.path.exists(port_file):
                return None
            with open(port_file) as f:
                return f.read().strip()
        self.port = int(fleet.wait_for(read_port, 30, "hub port"))
        self.ca = os.path.join(self.data, "tls", "ca.pem")
        self.url = f"https://{HOST}:{self.port}"
        fleet.wait_for(lambda: self.api("GET", "/api/v1/health")[0] == 200, 10, "hub health")


class DefaultDevice(fleet.Device):
    """fleet.Device started with the agent's DEFAULT settings: hub mode
    (--bootstrap) or local-folder mode (--bundle-dir); no interval flags."""

    def __init__(self, bins, root, device_id, hub, bundle_dir=None):
        super().__init__(bins, root, device_id, hub)
        self.bundle_dir = bundle_dir

    def start(self):
        self.expect_running = True
        cmd = [self.bins.agent, "run", "--state-dir", self.state, "--trust-dir", self.trust,
               "--serve-binary", self.bins.serve]
        cmd += ["--bundle-dir", self.bundle_dir] if self.bundle_dir else ["--bootstrap",
                                                                          self.bootstrap]
        self.command = cmd
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)

    def committed(self):
        try:
            return (self.agent_state().get("committed") or {}).get("release")
        except (OSError, ValueError):
            return None

    def serve_pid(self):
        kids = children_of(self.proc.pid) if self.proc else []
        return kids[0] if kids else None


def stop_fleet(devices, hub):
    """Stops agents and hub. An agent in a long poll does not see SIGTERM until
    the poll returns (up to the 120 s hold), so the agents are signalled first
    and the hub stopped next: on SIGTERM it answers every parked poll."""
    kids = {}
    for d in devices:
        d.expect_running = False
        if d.proc is not None and d.proc.poll() is None:
            kids[d.id] = children_of(d.proc.pid)
            d.proc.send_signal(signal.SIGTERM)
    if hub is not None:
        try:
            hub.stop()
        except AssertionError as e:
            log(str(e))
            hub.kill()
    for d in devices:
        if d.proc is None:
            continue
        try:
            d.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log(f"{d.id}: agent still running 30 s after SIGTERM; killed")
            d.proc.kill()
            d.proc.wait()
        # its outpost-serve child, if a killed agent left one behind
        for kid in kids.get(d.id, []):
            try:
                with open(f"/proc/{kid}/comm") as f:
                    if f.read().strip() == "outpost-serve":
                        os.kill(kid, signal.SIGTERM)
            except OSError:
                pass


def stop_process(proc, timeout=15):
    """SIGTERM, then SIGKILL, of one process we started (by its PID)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- byte-counting proxy

def tcp_segments(sock):
    """(segments received, segments sent) of a socket, from the kernel (TCP_INFO)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        segs_out, segs_in = struct.unpack_from("II", info, 136)
        return segs_in, segs_out
    except OSError:
        return None


class CountingProxy:
    """TCP proxy on loopback that logs every chunk it forwards (time,
    direction, bytes) per connection. 'up' = device -> hub, 'down' = hub ->
    device. TLS passes through untouched."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []
        self.closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.closed:
                client.close()
                return
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            conn = {"id": len(self.conns), "opened": time.time(), "closed": None, "chunks": [],
                    "sock": client, "upstream": upstream, "segs_final": None, "open_pumps": 2}
            with self.lock:
                self.conns.append(conn)
            for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(conn, src, dst, direction),
                                 daemon=True).start()

    def _pump(self, conn, src, dst, direction):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    conn["chunks"].append((time.time(), direction, len(data)))
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self.lock:
            conn[f"{direction}_eof"] = time.time()
            conn["open_pumps"] -= 1
            last = conn["open_pumps"] == 0
            if last:
                conn["segs_final"] = tcp_segments(conn["sock"])
                conn["closed"] = time.time()
        if last:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def segments_snapshot(self):
        """conn id -> (segs_in, segs_out) of the device-side socket, now."""
        out = {}
        with self.lock:
            for c in self.conns:
                segs = c["segs_final"] if c["closed"] else tcp_segments(c["sock"])
                if segs:
                    out[c["id"]] = segs
        return out

    def shut(self):
        """Stop listening and cut every connection: the hub becomes unreachable
        (connection refused) for the device behind this proxy."""
        self.closed = True
        try:
            # shutdown() wakes a thread blocked in accept(); close() alone
            # would leave the socket listening until that accept returns.
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.listener.close()
        except OSError:
            pass
        with self.lock:
            socks = [s for c in self.conns if not c["closed"] for s in (c["sock"], c["upstream"])]
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def analyse_traffic(proxy, t0, t1, seg0, seg1):
    """Bytes the device sent/received in [t0, t1), per exchange.

    Per connection, an exchange starts with device->hub bytes after hub->device
    bytes (or at the connection's start); hub->device bytes arriving more than
    30 s after the last activity start one of their own (the hub closing an
    idle connection). Each exchange keeps the bytes it moved inside the
    window (up_in, down_in); classify_traffic() names and sums them."""
    with proxy.lock:
        conns = [dict(c, chunks=list(c["chunks"])) for c in proxy.conns]
    exchanges = []
    up = down = 0
    for c in conns:
        ex = None
        n = 0
        for t, d, size in c["chunks"]:
            new_up = d == "up" and (ex is None or ex["down"] > 0)
            new_down = d == "down" and (ex is None or (ex["down"] > 0 and t - ex["last"] > 30))
            if new_up or new_down:
                ex = {"conn": c["id"], "index": n, "start": t, "up": 0, "down": 0, "up_in": 0,
                      "down_in": 0, "first_down": None, "last": t, "server_initiated": new_down}
                n += 1
                exchanges.append(ex)
            ex[d] += size
            if t0 <= t < t1:
                ex[d + "_in"] += size
                if d == "up":
                    up += size
                else:
                    down += size
            if d == "down" and ex["first_down"] is None:
                ex["first_down"] = t
            ex["last"] = t
    segs_in = segs_out = 0
    for cid, (si, so) in seg1.items():
        s0 = seg0.get(cid, (0, 0))
        segs_in += si - s0[0]
        segs_out += so - s0[1]
    # Connections the hub closed first, and after how long a silence.
    hub_closed = []
    for c in conns:
        down_eof, up_eof = c.get("down_eof"), c.get("up_eof")
        if down_eof and (up_eof is None or down_eof < up_eof) and c["chunks"]:
            before = [t for t, _, _ in c["chunks"] if t <= down_eof]
            if before and not proxy.closed:
                hub_closed.append(round(down_eof - max(before), 1))
    out = {"t0": t0, "t1": t1, "window_s": t1 - t0, "up": up, "down": down,
           "hub_closed_idle_after_s": hub_closed,
           "connections_opened": sum(1 for c in conns if t0 <= c["opened"] < t1),
           "connections_total": len(conns), "segments_in": segs_in, "segments_out": segs_out,
           "exchanges": exchanges}
    classify_traffic(out)
    return out


def classify_traffic(tr):
    """Names each exchange and sums the window's bytes by name (tr["kinds"]):
    'tls handshake' (a connection's first exchange - ClientHello .. server
    Finished - and, when the client's Finished goes out alone, the next one:
    < 100 bytes up, answered with session tickets), 'long poll' (answered
    >= 30 s after the request, i.e. held by the hub; or still held when the
    run ended), 'desired (answered at once)' (other requests on the poll
    connection), 'report' (status or telemetry on the reporter's connection,
    or a download), 'close' (close_notify alone, or the hub closing an idle
    connection). An exchange counts in the window its request started in;
    its bytes count where they moved."""
    exchanges = tr["exchanges"]
    held = lambda e: (e["first_down"] is not None  # noqa: E731
                      and e["first_down"] - e["start"] >= 30)
    poll_conns = {e["conn"] for e in exchanges if held(e) and not e["server_initiated"]}
    for e in exchanges:
        if e["server_initiated"] or (e["down"] == 0 and e["up"] <= 64):
            e["kind"] = "close"
        elif e["index"] == 0 or (e["index"] == 1 and e["up"] < 100):
            e["kind"] = "tls handshake"
            e["tail"] = e["index"] == 1  # the same handshake's end: not counted twice
        elif held(e) or (e["conn"] in poll_conns and e["first_down"] is None):
            e["kind"] = "long poll"
        elif e["conn"] in poll_conns:
            e["kind"] = "desired (answered at once)"
        else:
            e["kind"] = "report"
    kinds = {}
    for e in exchanges:
        k = kinds.setdefault(e["kind"], {"count": 0, "up": 0, "down": 0, "starts": []})
        if tr["t0"] <= e["start"] < tr["t1"] and not e.get("tail"):
            k["count"] += 1
            k["starts"].append(e["start"])
        k["up"] += e["up_in"]
        k["down"] += e["down_in"]
    tr["kinds"] = kinds
    return tr


# ---------------------------------------------------------------- mender

class Mender:
    """Debian's mender-client daemon against an unreachable loopback server."""
    SYSTEM_FILES = {
        "/etc/mender/artifact_info": "artifact_name=outpost-bench\n",
        "/usr/share/mender/identity/mender-device-identity":
            "#!/bin/sh\necho mac=02:00:00:00:00:01\n",
    }

    def __init__(self, root):
        self.dir = os.path.join(root, "mender")
        self.proc = None
        self.created = []
        self.skip_reason = None
        self.binary = shutil.which("mender")
        self.version = None
        if self.binary is None:
            self.skip_reason = ("`mender` is not installed (Debian: apt-get install "
                                "mender-client); "
                                "the comparison is skipped")
        elif os.geteuid() != 0:
            self.skip_reason = ("not root: mender-client reads its artifact name and identity "
                                "script from fixed system paths; the comparison is skipped")

    def start(self, server_port):
        os.makedirs(os.path.join(self.dir, "data"))
        for path, text in self.SYSTEM_FILES.items():
            if os.path.exists(path):
                continue
            if not os.path.isdir(os.path.dirname(path)):
                self.skip_reason = f"{os.path.dirname(path)} is missing: mender-client incomplete"
                return False
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o755)
            self.created.append(path)
        with open(os.path.join(self.dir, "data", "device_type"), "w") as f:
            f.write("device_type=outpost-bench\n")
        # The documented defaults (mender.conf.production): update check every
        # 30 min, inventory every 8 h, retries up to every 5 min.
        conf = {"ServerURL": f"https://{HOST}:{server_port}",
                "DeviceTypeFile": os.path.join(self.dir, "data", "device_type"),
                "UpdatePollIntervalSeconds": 1800, "InventoryPollIntervalSeconds": 28800,
                "RetryPollIntervalSeconds": 300,
                "ModulesWorkPath": os.path.join(self.dir, "modules-work"),
                "DBus": {"Enabled": False}}
        self.conf = os.path.join(self.dir, "mender.conf")
        with open(self.conf, "w") as f:
            json.dump(conf, f)
        self.version = " ".join(subprocess.run([self.binary, "--version"], capture_output=True,
                                               text=True).stdout.split()[:1])
        self.command = [self.binary, "--config", self.conf, "--fallback-config",
                        os.path.join(self.dir, "none.conf"), "--data",
                        os.path.join(self.dir, "data"), "--no-syslog", "daemon"]
        self.log_path = os.path.join(self.dir, "mender.log")
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(self.command, stdout=log_file, stderr=subprocess.STDOUT,
                                         cwd=self.dir)
        return True

    def stop(self):
        stop_process(self.proc)
        for path in self.created:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.created = []


# ---------------------------------------------------------------- phase: idle

def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_committed(devices, release, timeout):
    fleet.wait_for(lambda: all(d.committed() == release for d in devices), timeout,
                   f"{[d.id for d in devices]} to commit {release}", interval=0.5)


def phase_idle(args, bins):
    defaults = agent_defaults(bins.agent)
    if args.idle_window is None:
        args.idle_window = 2 * defaults["telemetry-interval"] + 60
    out = {"window_s": args.idle_window, "loadavg_start": loadavg(), "defaults": defaults}
    root = tempfile.mkdtemp(prefix="outpost-fleet-bench-idle-")
    hub = None
    devices = []
    proxies = []
    mender = Mender(root)
    try:
        releases = fleet.Releases(bins, root)
        releases.build("r1", 10)
        hub = DefaultHub(bins, root)
        hub.create_admin_token()
        hub.trust(releases.public_key)
        hub.start()
        log(f"idle: hub on {hub.port}")
        # A: hub mode, behind the counting proxy. B: hub mode behind a proxy
        # that is shut once r1 is committed (hub unreachable). C: local folder.
        proxy_a, proxy_b = CountingProxy(hub.port), CountingProxy(hub.port)
        proxies += [proxy_a, proxy_b]
        dev_a = DefaultDevice(bins, root, "idle-hub", hub)
        dev_b = DefaultDevice(bins, root, "idle-unreachable", hub)
        for d, p in ((dev_a, proxy_a), (dev_b, proxy_b)):
            shutil.copy(releases.public_key, d.trust)
            hub.bootstrap_file(d.bootstrap, d.id)
            with open(d.bootstrap) as f:
                boot = json.load(f)
            boot["hub_url"] = f"https://{HOST}:{p.port}"
            with open(d.bootstrap, "w") as f:
                json.dump(boot, f)
        folder = os.path.join(root, "usb")
        os.makedirs(folder)
        dev_c = DefaultDevice(bins, root, "idle-folder", hub, bundle_dir=folder)
        shutil.copy(releases.public_key, dev_c.trust)
        devices = [dev_a, dev_b, dev_c]
        for d in devices:
            d.start()
        out["agent_command"] = " ".join(
            shlex.quote(os.path.relpath(x, ROOT) if x.startswith(ROOT) else x.replace(root, "$TMP"))
            for x in dev_a.command)
        mender_port = free_port()  # closed again: connection refused, like device B
        if mender.skip_reason is None and not mender.start(mender_port):
            log(f"idle: mender: {mender.skip_reason}")
        elif mender.skip_reason:
            log(f"idle: mender: {mender.skip_reason}")

        def online(device_id):
            status, body = hub.api("GET", f"/api/v1/admin/devices/{device_id}")
            return status == 200 and body["online"]
        fleet.wait_for(lambda: online(dev_a.id) and online(dev_b.id), 90, "both agents enrolled")
        hub.push(releases.paths["r1"])
        rid = hub.rollout("r1", ["100%"], soak=1, deadline=600)
        shutil.copy(releases.paths["r1"], os.path.join(folder, "r1.tar.zst"))
        wait_committed(devices, "r1", 240)
        fleet.wait_for(lambda: hub.rollout_state(rid)["state"] == "completed", 60,
                       "the rollout to complete")
        proxy_b.shut()
        log(f"idle: r1 committed on 3 agents; hub unreachable for {dev_b.id}; settling "
            f"{args.idle_settle} s")
        time.sleep(args.idle_settle)

        pids = {"agent (hub)": dev_a.proc.pid, "agent (hub unreachable)": dev_b.proc.pid,
                "agent (local folder)": dev_c.proc.pid, "hub": hub.proc.pid}
        for d, name in ((dev_a, "outpost-serve (hub)"), (dev_c, "outpost-serve (local folder)")):
            if d.serve_pid():
                pids[name] = d.serve_pid()
        if mender.proc is not None:
            pids["mender daemon"] = mender.proc.pid
        cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        busy0, self0 = system_busy_s(), time.process_time()
        seg0 = proxy_a.segments_snapshot()
        sampler = RssSampler(pids)
        sampler.start()
        t0 = time.time()
        log(f"idle: window of {args.idle_window} s starts")
        while time.time() - t0 < args.idle_window:
            time.sleep(min(10, args.idle_window - (time.time() - t0)) if args.idle_window > 0
                       else 0)
            for d in devices:
                if d.proc.poll() is not None:
                    raise AssertionError(f"{d.id}: agent exited {d.proc.returncode}")
        t1 = time.time()
        seg1 = proxy_a.segments_snapshot()
        cpu1 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        busy1, self1 = system_busy_s(), time.process_time()
        out["agent_mappings"] = top_mappings(dev_a.proc.pid)
        rss = sampler.stop()
        wall = t1 - t0
        out["processes"] = {name: {"cpu_s": cpu1[name] - cpu0[name],
                                   "cpu_pct": 100 * (cpu1[name] - cpu0[name]) / wall,
                                   "rss": rss.get(name),
                                   "hwm_kb": proc_status(pid, "VmHWM")}
                            for name, pid in pids.items()}
        out["bench_cpu_s"] = self1 - self0
        out["machine_busy_cores"] = (busy1 - busy0) / wall
        out["traffic"] = analyse_traffic(proxy_a, t0, t1, seg0, seg1)
        db = sqlite3.connect(f"file:{os.path.join(hub.data, 'hub.db')}?mode=ro", uri=True)
        out["telemetry_batches"] = db.execute(
            "SELECT COUNT(*) FROM telemetry_batches WHERE device_id = ? AND received_at >= ? "
            "AND received_at < ?", (dev_a.id, int(t0 * 1000), int(t1 * 1000))).fetchone()[0]
        out["status_events"] = db.execute(
            "SELECT COUNT(*) FROM device_events WHERE device_id = ? AND hub_time >= ? "
            "AND hub_time < ?", (dev_a.id, int(t0 * 1000), int(t1 * 1000))).fetchone()[0]
        db.close()
        out["mender"] = {"skipped": mender.skip_reason, "version": mender.version,
                         "command": " ".join(mender.command).replace(root, "$TMP")
                         if mender.proc else None}
        if mender.proc is not None:
            with open(mender.log_path, errors="replace") as f:
                out["mender"]["log_lines"] = sum(1 for _ in f)
        out["agent_log_lines"] = {d.id: d.log_text().count("\n") for d in devices}
        out["unreachable_log_tail"] = dev_b.log_text()[-600:]
        out["wall_s"] = wall
        out["loadavg_end"] = loadavg()
        return out
    finally:
        mender.stop()
        stop_fleet(devices, hub)
        for p in proxies:
            p.shut()
        if args.keep:
            log(f"idle: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- simulator (child process)

class SimConn:
    """One persistent HTTPS/1.1 connection (asyncio); reopened when the hub
    closed it (as the agent's HTTP client does)."""

    def __init__(self, sim):
        self.sim = sim
        self.reader = self.writer = None

    async def close(self):
        if self.writer is not None:
            w, self.writer, self.reader = self.writer, None, None
            w.close()
            try:
                await asyncio.wait_for(w.wait_closed(), 2)
            except (asyncio.TimeoutError, OSError, ssl.SSLError):
                pass

    async def _open(self):
        t = time.time()
        self.reader, self.writer = await asyncio.open_connection(HOST, self.sim.port,
                                                                 ssl=self.sim.ctx)
        self.sim.record("connect", t, time.time(), 0)

    async def _response(self):
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("connection closed by the hub")
        status = int(line.split()[1])
        headers = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b""
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        return status, headers, body

    async def request(self, method, path, headers=None, body=None, timeout=30):
        data = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.sim.port}",
                "User-Agent: outpost-fleet-bench", "Accept: */*",
                f"X-Outpost-Device-Time: {int(time.time() * 1000)}"]
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}")
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + data
        for attempt in range(2):
            reused = self.writer is not None and not self.reader.at_eof()
            if not reused:
                await self.close()
                await self._open()
            try:
                self.writer.write(raw)
                await self.writer.drain()
                status, rh, rb = await asyncio.wait_for(self._response(), timeout)
                if rh.get("connection", "").lower() == "close":
                    await self.close()
                return status, rh, rb
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
                await self.close()
                if attempt == 1 or not reused:
                    raise


class Simulator:
    def __init__(self, cfg):
        self.cfg = cfg
        self.port = cfg["port"]
        self.ctx = ssl.create_default_context(cafile=cfg["ca"])
        self.records = []  # (kind, t_start, t_end, status)
        self.stopping = False
        self.polling = 0
        self.committed = 0

    def record(self, kind, t0, t1, status):
        self.records.append((kind, round(t0, 3), round(t1, 3), status))

    def samples(self, dev):
        # The agent's shape since c049578: the batch carries time_ms, samples
        # carry labels only when they have some.
        s = lambda m, v, labels=None: (  # noqa: E731
            {"metric": m, "value": v, "labels": labels} if labels else {"metric": m, "value": v})
        return [s("runtime_up", 1), s("inferences_per_second", 0.0), s("requests", 0),
                s("request_rate", 0.0), s("error_rate", 0),
                s("model_loaded", 1, {"model": "add_one", "version": "1"}),
                s("cpu_percent", round(random.uniform(1, 5), 2)),
                s("memory_used_percent", round(random.uniform(20, 40), 2)),
                s("disk_free_bytes", 52_000_000_000 + random.randint(0, 10**6)),
                s("disk_used_percent", 31.2), s("uptime_s", time.monotonic() + 86400),
                s("clock_offset_ms", 0)]

    async def enroll_all(self):
        conn = SimConn(self)
        creds = []
        for i in range(self.cfg["devices"]):
            t = time.time()
            status, _, body = await conn.request(
                "POST", "/api/v1/device/enroll",
                body={"token": self.cfg["token"], "device_id": f"sim-{i:05d}",
                      "facts": {"arch": "x86_64", "accelerators": ["cpu"],
                                "agent_version": "sim", "hostname": f"sim-{i:05d}"},
                      "labels": {}})
            self.record("enroll", t, time.time(), status)
            if status != 201:
                raise SystemExit(f"enroll sim-{i}: HTTP {status} {body[:200]!r}")
            creds.append(json.loads(body)["token"])
        await conn.close()
        return creds

    async def device(self, i, token, start_delay):
        await asyncio.sleep(start_delay)
        auth = {"Authorization": f"Bearer {token}"}
        poll, report = SimConn(self), SimConn(self)
        seq = 0
        state = {"state": "idle"}

        async def post(kind, path, body):
            t = time.time()
            try:
                status, _, _ = await report.request("POST", path, auth, body)
            except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                status = f"error: {type(e).__name__}"
            self.record(kind, t, time.time(), status)

        async def telemetry():
            await asyncio.sleep(random.uniform(0, self.cfg["telemetry_interval"]))
            n = 0
            while True:
                n += 1
                await post("telemetry", "/api/v1/device/telemetry",
                           {"batch_id": f"sim-{n}", "time_ms": int(time.time() * 1000),
                            "samples": self.samples(i)})
                await asyncio.sleep(self.cfg["telemetry_interval"])

        await post("status", "/api/v1/device/status",  # the agent's first report after a start
                   {"events": [], "state": state, "progress": {"bytes_done": 0, "bytes_total": 0},
                    "clock_offset_ms": 0})
        tel = asyncio.ensure_future(telemetry())
        etag = None
        current = None
        first = True
        try:
            while True:
                headers = dict(auth)
                if etag:
                    headers["If-None-Match"] = etag
                wait = self.cfg["wait"]
                if etag and first:
                    first = False
                    self.polling += 1
                t = time.time()
                try:
                    status, rh, body = await poll.request(
                        "GET", f"/api/v1/device/desired?wait={wait}", headers, timeout=wait + 30)
                except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError) as e:
                    self.record("desired", t, time.time(), f"error: {type(e).__name__}")
                    await asyncio.sleep(5)
                    continue
                self.record("desired", t, time.time(), status)
                if status == 200:
                    etag = rh.get("etag")
                    release = (json.loads(body).get("release") or {}).get("name")
                    if release and release != current:
                        # Report the install as the agent would (without
                        # downloading): downloading ... committed.
                        events = []
                        for st in ("downloading", "committed"):
                            seq += 1
                            events.append({"seq": seq, "state": st, "release": release,
                                           "time": int(time.time())})
                        state = {"state": "committed", "committed": {"release": release},
                                 "previous": {"release": current} if current else None}
                        await post("status", "/api/v1/device/status",
                                   {"events": events, "state": state,
                                    "progress": {"bytes_done": 0, "bytes_total": 0},
                                    "clock_offset_ms": 0})
                        current = release
                        self.committed += 1
                    continue  # something changed: look again at once
                await asyncio.sleep(self.cfg["updater_sleep"])
        finally:
            tel.cancel()

    async def main(self):
        t = time.time()
        creds = await self.enroll_all()
        print(f"ENROLLED {len(creds)} {time.time() - t:.3f}", flush=True)
        ramp = self.cfg["ramp_per_s"]
        tasks = [asyncio.ensure_future(self.device(i, c, i / ramp)) for i, c in enumerate(creds)]
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, done.set)

        async def progress():
            announced = False
            while True:
                await asyncio.sleep(1)
                if not announced and self.polling >= len(creds):
                    print(f"READY {self.polling}", flush=True)
                    announced = True
                if self.cfg.get("report_commits"):
                    print(f"COMMITTED {self.committed}", flush=True)
        prog = asyncio.ensure_future(progress())
        await done.wait()
        prog.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with open(self.cfg["out"], "w") as f:
            json.dump({"records": self.records}, f)


def simulate(cfg_path):
    with open(cfg_path) as f:
        cfg = json.load(f)
    raise_fd_limit(cfg["devices"] * 3 + 256)
    asyncio.run(Simulator(cfg).main())


# ---------------------------------------------------------------- phase: scale

class PgGroup:
    """CPU and PSS of a PostgreSQL server: the postmaster (with its reaped
    children) and its live children."""

    def __init__(self, pid):
        self.pid = pid

    def cpu_s(self):
        total = proc_cpu_s(self.pid, children=True)
        for kid in children_of(self.pid):
            try:
                total += proc_cpu_s(kid)
            except OSError:
                pass
        return total

    def pss_kb(self):
        return proc_pss_kb(self.pid) + sum(proc_pss_kb(k) for k in children_of(self.pid))


def phase_scale(args, bins, db_kind):
    defaults = agent_defaults(bins.agent)
    if args.scale_window is None:
        args.scale_window = defaults["telemetry-interval"]
    out = {"db": db_kind, "devices": args.devices, "window_s": args.scale_window,
           "loadavg_start": loadavg(), "defaults": defaults}
    root = tempfile.mkdtemp(prefix=f"outpost-fleet-bench-scale-{db_kind}-")
    hub = pg = sim = None
    reader = None
    try:
        db_url = ""
        if db_kind == "postgres":
            import pgserver
            pg = pgserver.PostgresServer()
            db_url = pg.start()
            out["postgres"] = "PostgreSQL 15 from tests/e2e/pgserver.py (fsync=off, " \
                              "synchronous_commit=off)"
        releases = fleet.Releases(bins, root)
        releases.build("r1", 10)
        hub = DefaultHub(bins, root, db_url=db_url)
        hub.create_admin_token()
        hub.trust(releases.public_key)
        hub.start()
        out["hub_rss_empty_kb"] = proc_status(hub.proc.pid, "VmRSS")
        status, body = hub.api("POST", "/api/v1/admin/bootstrap-tokens",
                               {"uses": args.devices, "ttl_s": 7200, "site": "sim"})
        assert status == 201, (status, body)
        cfg = {"port": hub.port, "ca": hub.ca, "token": body["token"], "devices": args.devices,
               "wait": int(defaults["hub-wait"]),
               "telemetry_interval": defaults["telemetry-interval"],
               "updater_sleep": defaults["poll-interval"], "ramp_per_s": args.ramp,
               "out": os.path.join(root, "sim.json")}
        cfg_path = os.path.join(root, "sim-config.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        sim = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--simulate", cfg_path],
                               stdout=subprocess.PIPE, text=True)
        lines = []
        got = threading.Condition()

        def read_lines():
            for line in sim.stdout:
                with got:
                    lines.append(line.split())
                    got.notify_all()
        reader = threading.Thread(target=read_lines, daemon=True)
        reader.start()

        def wait_line(word, timeout):
            deadline = time.monotonic() + timeout
            with got:
                while True:
                    for ln in lines:
                        if ln and ln[0] == word:
                            return ln
                    if sim.poll() is not None:
                        raise AssertionError(f"simulator exited {sim.returncode}")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise AssertionError(f"simulator: no {word} within {timeout} s")
                    got.wait(min(left, 1))
        t = time.monotonic()
        enrolled = wait_line("ENROLLED", 900)
        out["enroll_s"] = float(enrolled[2])
        log(f"scale[{db_kind}]: {args.devices} devices enrolled in {out['enroll_s']:.1f} s")
        wait_line("READY", 600)
        out["connect_s"] = time.monotonic() - t - out["enroll_s"]
        log(f"scale[{db_kind}]: every device long-polling")
        t_push = time.monotonic()
        hub.push(releases.paths["r1"])
        rid = hub.rollout("r1", [1, "10%", "100%"], soak=0, deadline=900)
        fleet.wait_for(lambda: hub.rollout_state(rid)["state"] in ("completed", "halted"), 900,
                       "the simulated fleet's rollout", interval=1)
        final = hub.rollout_state(rid)
        out["rollout"] = {"state": final["state"], "counts": final["counts"],
                          "push_to_done_s": time.monotonic() - t_push}
        log(f"scale[{db_kind}]: rollout {final['state']} in "
            f"{out['rollout']['push_to_done_s']:.1f} s; settling {args.scale_settle} s")
        time.sleep(args.scale_settle)

        pgg = PgGroup(pg.proc.pid) if pg else None
        cpu0 = {"hub": proc_cpu_s(hub.proc.pid), "simulator": proc_cpu_s(sim.pid)}
        if pgg:
            cpu0["postgres"] = pgg.cpu_s()
        busy0 = system_busy_s()
        sampler = RssSampler({"hub": hub.proc.pid, "simulator": sim.pid},
                             pss={"postgres (PSS, all processes)": pgg.pss_kb} if pgg else None)
        sampler.start()
        t0 = time.time()
        log(f"scale[{db_kind}]: window of {args.scale_window} s starts")
        time.sleep(args.scale_window)
        t1 = time.time()
        cpu1 = {"hub": proc_cpu_s(hub.proc.pid), "simulator": proc_cpu_s(sim.pid)}
        if pgg:
            cpu1["postgres"] = pgg.cpu_s()
        busy1 = system_busy_s()
        rss = sampler.stop()
        wall = t1 - t0
        out["processes"] = {name: {"cpu_s": cpu1[name] - cpu0[name],
                                   "cpu_pct": 100 * (cpu1[name] - cpu0[name]) / wall}
                            for name in cpu0}
        out["rss"] = rss
        out["hub_hwm_kb"] = proc_status(hub.proc.pid, "VmHWM")
        out["hub_threads"] = proc_status(hub.proc.pid, "Threads")
        out["hub_fds"] = len(os.listdir(f"/proc/{hub.proc.pid}/fd"))
        out["machine_busy_cores"] = (busy1 - busy0) / wall
        out["wall_s"] = wall
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=120)
        with open(cfg["out"]) as f:
            records = json.load(f)["records"]
        out["requests"] = summarise_records(records, t0, t1)
        out["enroll_latency_ms"] = latency_summary(
            [(r[2] - r[1]) * 1000 for r in records if r[0] == "enroll"])
        out["loadavg_end"] = loadavg()
        return out
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.wait()
        if hub:
            try:
                hub.stop()
            except AssertionError as e:
                log(str(e))
                hub.kill()
        if pg:
            pg.stop()
        if args.keep:
            log(f"scale: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def latency_summary(values):
    if not values:
        return None
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return {"n": len(v), "p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": v[-1]}


def summarise_records(records, t0, t1):
    """Requests that ended in the window, by kind and status."""
    out = {}
    for kind, s, e, status in records:
        if not (t0 <= e < t1):
            continue
        key = f"{kind} {status}"
        out.setdefault(key, {"count": 0, "ms": []})
        out[key]["count"] += 1
        out[key]["ms"].append((e - s) * 1000)
    return {k: {"count": v["count"], "per_s": v["count"] / (t1 - t0),
                "latency_ms": latency_summary(v["ms"])} for k, v in sorted(out.items())}


# ---------------------------------------------------------------- phase: rollout

def phase_rollout(args, bins):
    out = {"runs": [], "loadavg_start": loadavg(), "defaults": agent_defaults(bins.agent)}
    root = tempfile.mkdtemp(prefix="outpost-fleet-bench-rollout-")
    hub = None
    devices = []
    try:
        releases = fleet.Releases(bins, root)
        answers = []
        for n in range(args.rollout_runs):
            version = 1 + n % 2
            releases.build(f"r{n + 1}", 10 * (n + 1), version=version, expect=float(version))
            answers.append(version)
        hub = DefaultHub(bins, root)
        hub.create_admin_token()
        hub.trust(releases.public_key)
        hub.start()
        for i in range(5):
            d = DefaultDevice(bins, root, f"dev-{i}", hub)
            shutil.copy(releases.public_key, d.trust)
            hub.bootstrap_file(d.bootstrap, d.id)
            d.start()
            devices.append(d)

        def online(device_id):
            status, body = hub.api("GET", f"/api/v1/admin/devices/{device_id}")
            return status == 200 and body["online"]
        fleet.wait_for(lambda: all(online(d.id) for d in devices), 90, "5 devices online")
        time.sleep(3)
        for n in range(args.rollout_runs):
            name = f"r{n + 1}"
            t0 = time.monotonic()
            wall0 = time.time()
            hub.push(releases.paths[name])
            rid = hub.rollout(name, [1, "50%", "100%"], soak=1, deadline=600)
            # When the hub hears of each commit: its rollout's committed count,
            # polled every 0.2 s (event hub_time is the event's own moment on
            # the hub's clock, not its arrival).
            heard = []
            deadline = time.monotonic() + 900
            while True:
                state = hub.rollout_state(rid)
                now = time.time() - wall0
                while len(heard) < state["counts"].get("committed", 0):
                    heard.append(round(now, 1))
                if state["state"] in ("completed", "halted") or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            took = time.monotonic() - t0
            final = hub.rollout_state(rid)
            commits, starts = [], []
            for d in devices:
                events = hub.events(d.id)
                for e in events:
                    if e["state"] == "committed" and e["release"] == name:
                        commits.append(round(e["hub_time"] / 1000 - wall0, 1))
                fresh = [e["hub_time"] / 1000 for e in events if e["state"] == "downloading"
                         and e["hub_time"] / 1000 >= wall0 - 1]
                if fresh:  # (the release of a download is named once it is verified)
                    starts.append(round(min(fresh) - wall0, 1))
            commits.sort()
            lags = [round(h - c, 1) for h, c in zip(heard, commits)]
            out["runs"].append({"release": name, "state": final["state"], "push_to_100pct_s": took,
                                "commits_s": commits, "heard_s": heard,
                                "downloads_s": sorted(starts),
                                "commit_report_lag_s": lags, "from_scratch": n == 0})
            log(f"rollout: {name} {final['state']} in {took:.1f} s (commits at {sorted(commits)})")
            wait_committed(devices, name, 60)
            time.sleep(3)
    finally:
        stop_fleet(devices, hub)
        shutil.rmtree(root, ignore_errors=True)
    if not args.no_e2e:
        cmd = [sys.executable, os.path.join(ROOT, "tests", "e2e", "test_fleet.py"),
               "FleetTest.test_1_good_release_rolls_out_in_waves"]
        log("rollout: running tests/e2e/test_fleet.py test_1")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        timings = None
        for line in p.stderr.splitlines():
            if line.startswith("fleet timings:"):
                timings = json.loads(line.split(":", 1)[1])
        out["e2e"] = {"returncode": p.returncode, "timings": timings,
                      "command": "python3 tests/e2e/test_fleet.py "
                                 "FleetTest.test_1_good_release_rolls_out_in_waves"}
        if p.returncode != 0:
            out["e2e"]["stderr_tail"] = p.stderr[-2000:]
    out["loadavg_end"] = loadavg()
    return out


# ---------------------------------------------------------------- report

def kb(n):
    return f"{n / 1000:.1f} kB"


def mib(kb_):
    return f"{kb_ / 1024:.1f} MiB"


def machine_line():
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores (`nproc`), {mem}, Linux {os.uname().release}"


def render_idle(r, command, when):
    d = r.get("defaults", OLD_DEFAULTS)
    tr = r["traffic"]
    w = tr["window_s"]
    hour = 3600 / w
    kinds = tr["kinds"]
    lines = ["<!-- begin: fleet_idle -->",
             "## Idle device: bytes on the wire (issue 4) and agent footprint (issue 3)", "",
             f"Produced by `{command}` on {when}. Machine: {machine_line()}; shared with other "
             f"work (load average before / after: {r['loadavg_start']} / {r['loadavg_end']}; "
             f"the whole machine was busy {r['machine_busy_cores']:.2f} cores on average during "
             f"the window), so CPU figures carry that noise.", "",
             "### Bytes a device sends and receives per hour while idle", "",
             f"One hub and one real `outpost-agent` enrolled with default settings "
             f"(`{r['agent_command']}`: long poll {fmt_s(d['hub-wait'])}, heartbeat every "
             f"{fmt_s(d['telemetry-interval'])}, status reports "
             f"only when something changed), release r1 committed first, then idle for a "
             f"{w:.0f} s window. A byte-counting TCP proxy on loopback sits between agent and hub "
             f"(the bootstrap file's hub_url points at it; TLS passes through untouched), so "
             f"the figures are TLS records + HTTP, everything above TCP. Extrapolated to an "
             f"hour as window bytes x 3600 / {w:.0f}.", "",
             "| | device -> hub | hub -> device | total |",
             "| --- | ---: | ---: | ---: |",
             f"| measured over {w:.0f} s | {kb(tr['up'])} | {kb(tr['down'])} | "
             f"{kb(tr['up'] + tr['down'])} |",
             f"| per hour | {kb(tr['up'] * hour)} | {kb(tr['down'] * hour)} | "
             f"**{kb((tr['up'] + tr['down']) * hour)}** |"]
    segs = tr["segments_in"] + tr["segments_out"]
    syn_fin = 2 * tr["connections_opened"]
    hdr_h = (segs + syn_fin) * HEADER_BYTES * hour
    total_h = (tr["up"] + tr["down"]) * hour
    lines += [f"| TCP/IP headers per hour (estimate, below) | | | {kb(hdr_h)} |",
              f"| **per hour with headers** | | | **{kb(total_h + hdr_h)}** |",
              f"| per 30-day month (720 h): without / with headers | | | "
              f"{total_h * 720 / 1e6:.1f} MB / {(total_h + hdr_h) * 720 / 1e6:.1f} MB |", "",
              f"Target (issue 4): at most 30 kB per hour (about 21 MB a month). Measured "
              f"{kb(total_h)} per hour above TCP and about {kb(total_h + hdr_h)} with TCP/IP "
              f"headers: **{'PASS' if total_h + hdr_h <= 30e3 else 'FAIL'}**"
              + (" (above TCP alone it would pass)" if total_h <= 30e3 < total_h + hdr_h else "")
              + ".", ""]
    lines += ["Breakdown (exchanges starting in the window; bytes by the exchange they belong to):",
              "",
              "| kind | count | device -> hub | hub -> device | bytes each (mean) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name in ("long poll", "desired (answered at once)", "report", "tls handshake", "close"):
        k = kinds.get(name)
        if not k or (k["count"] == 0 and k["up"] + k["down"] == 0):
            continue
        each = (k["up"] + k["down"]) / k["count"] if k["count"] else 0
        lines.append(f"| {name} | {k['count']} | {kb(k['up'])} | {kb(k['down'])} | "
                     f"{each:.0f} B |")
    polls = kinds.get("long poll", {}).get("starts", [])
    gaps = [b - a for a, b in zip(polls, polls[1:])]
    lines += ["",
              f"- Reports in the window: {kinds.get('report', {}).get('count', 0)}, of which "
              f"{r['telemetry_batches']} telemetry batches (heartbeats, from the hub's "
              f"database) and {r['status_events']} status events: an idle agent sends no status "
              f"report. TCP connections opened in the window: {tr['connections_opened']} "
              f"(every new one costs a TLS handshake)."]
    if gaps:
        lines.append(f"- Long polls start every {statistics.median(gaps):.1f} s (median): the "
                     f"hub holds each {fmt_s(d['hub-wait'])} and answers it at its next re-check "
                     f"of parked polls (every {fmt_s(HUB_RECHECK_S)}), then the agent's updater "
                     f"sleeps its --poll-interval ({fmt_s(d['poll-interval'])}).")
    closed = tr.get("hub_closed_idle_after_s")
    if closed:
        lines.append(f"- The hub closed {len(closed)} idle connection(s) of the device after "
                     f"{statistics.median(closed):.0f} s of silence (median; its idle timeout), "
                     f"so a heartbeat every {fmt_s(d['telemetry-interval'])} "
                     + ("finds its connection closed and opens a new one (TCP + TLS handshake)."
                        if statistics.median(closed) < d["telemetry-interval"] else
                        "can reuse its connection."))
    poll_k = kinds.get("long poll", {"count": 0, "up": 0, "down": 0})
    side = [kinds.get(n, {"up": 0, "down": 0}) for n in ("report", "tls handshake", "close")]
    beats = r["telemetry_batches"]
    if poll_k["count"] and gaps and beats:
        poll_each = (poll_k["up"] + poll_k["down"]) / poll_k["count"]
        beat_each = sum(k["up"] + k["down"] for k in side) / beats
        poll_period = statistics.median(gaps)
        starts = sorted(kinds.get("report", {}).get("starts", []))
        beat_gaps = [b - a for a, b in zip(starts, starts[1:])]
        beat_period = statistics.median(beat_gaps) if beat_gaps else d["telemetry-interval"]
        model = poll_each * 3600 / poll_period + beat_each * 3600 / beat_period
        lines.append(f"- Cross-check by rates instead of window length: {poll_each:.0f} B per long "
                     f"poll x {3600 / poll_period:.1f} polls/hour + {beat_each:.0f} B per "
                     f"heartbeat "
                     f"(its request plus the TLS handshake and close of the connection it opens) x "
                     f"{3600 / beat_period:.1f} heartbeats/hour (one every {beat_period:.0f} s, "
                     + ("as measured" if beat_gaps else "the configured interval") + ") = "
                     f"{kb(model)} per hour before TCP/IP headers.")
    lines.append(f"- TCP/IP headers are not seen by a proxy, so they are an estimate: {segs} TCP "
                 f"segments in the window on the device's connections (the kernel's `TCP_INFO` "
                 f"segs_in + segs_out of the proxy's device-side sockets, which count data, pure "
                 f"ACKs, FINs and keep-alive probes) plus 2 per connection opened (the SYN-ACK and "
                 f"last ACK those counters miss), x {HEADER_BYTES} bytes (IPv4 20 + TCP 20 + "
                 f"timestamp option 12). Loopback's 64 KiB MTU keeps the TLS handshake's "
                 f"certificate flight in one segment where a 1500-byte link needs two or three, "
                 f"and loopback loses nothing, so a real link has a few more segments.")
    lines += ["", "### Footprint of the idle agent, and Debian's mender-client beside it", "",
              f"Same window ({w:.0f} s), same machine, all idle with a committed release: "
              f"CPU = utime + stime of the process itself from /proc/PID/stat over the window "
              f"(children excluded: outpost-agent's outpost-serve is listed separately), "
              f"RSS = VmRSS sampled every 5 s (median, max).", "",
              "| process | mode | RSS median | RSS max | anon / file-backed (median) "
              "| PSS (median) "
              "| CPU over the window | CPU (% of one core) | target: RSS < 15 MB (14.3 MiB) and "
              "CPU < 0.5% |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    modes = {"agent (hub)": "hub, default intervals, hub reachable (the device above)",
             "agent (hub unreachable)": "hub, default intervals, hub unreachable (connection "
                                        "refused)",
             "agent (local folder)": "--bundle-dir, default --poll-interval 5 s",
             "mender daemon": "daemon, server unreachable (connection refused), documented "
                              "default intervals",
             "outpost-serve (hub)": "child of agent (hub): add_one loaded (informational)",
             "outpost-serve (local folder)": "child of agent (local folder) (informational)",
             "hub": "the hub serving the two agents (informational)"}
    for name, p in r["processes"].items():
        rss = p["rss"] or {}
        target = ""
        if name.startswith("agent"):
            rss_ok = rss.get("max_kb", 1e9) * 1024 < 15e6
            cpu_ok = p["cpu_pct"] < 0.5
            target = ("PASS" if rss_ok and cpu_ok else "FAIL") + \
                f" (RSS {'ok' if rss_ok else 'over'}, CPU {'ok' if cpu_ok else 'over'})"
        parts = (f"{mib(rss['RssAnon_kb'])} / {mib(rss['RssFile_kb'])}"
                 if "RssAnon_kb" in rss else "")
        pss = mib(rss["Pss_kb"]) if "Pss_kb" in rss else ""
        lines.append(f"| {name} | {modes.get(name, '')} | {mib(rss.get('median_kb', 0))} | "
                     f"{mib(rss.get('max_kb', 0))} | {parts} | {pss} | {p['cpu_s']:.2f} s | "
                     f"{p['cpu_pct']:.3f}% | {target} |")
    m = r["mender"]
    lines.append("")
    if m["skipped"]:
        lines.append(f"- mender-client: {m['skipped']}.")
    else:
        lines.append(f"- mender-client: Debian 12's package ({m['version']}), run as "
                     f"`{m['command']}` "
                     f"with a temporary mender.conf (ServerURL on a closed loopback port, "
                     f"UpdatePollIntervalSeconds 1800, InventoryPollIntervalSeconds 28800, "
                     f"RetryPollIntervalSeconds 300, DBus off) and, at the fixed paths the package "
                     f"reads, a temporary artifact_info and identity script (removed afterwards). "
                     f"Without a reachable server it retries authorisation with backoff; no Mender "
                     f"server was run, so the outpost-agent row to compare it with is 'hub "
                     f"unreachable'. Mender's RSS includes its Go runtime; it generated its "
                     f"device key (RSA) before the window.")
    if r.get("agent_mappings"):
        lines.append("- Where the hub-mode agent's RSS is (smaps, end of the window): "
                     + ", ".join(f"{os.path.basename(k) if k.startswith('/') else k} "
                                 f"{v / 1024:.1f} MiB" for k, v in r["agent_mappings"])
                     + ". File-backed pages are mostly shared libraries (also mapped by "
                       "outpost-serve and other processes), hence the much lower PSS.")
    lines.append(f"- Log lines written by each agent over the whole run: "
                 + ", ".join(f"{k} {v}" for k, v in r["agent_log_lines"].items())
                 + (f"; mender {m.get('log_lines')}" if m.get("log_lines") else "") + ".")
    lines.append(f"- The benchmark process itself (proxy threads, sampling) used "
                 f"{r['bench_cpu_s']:.2f} s of CPU over the window.")
    lines.append("<!-- end: fleet_idle -->")
    return "\n".join(lines)


def per_device_kib(r):
    return (r["rss"]["hub"]["median_kb"] - r["hub_rss_empty_kb"]) / r["devices"]


def render_scale(results, command, when):
    d = results[0].get("defaults", OLD_DEFAULTS)
    cycle = d["hub-wait"] + HUB_RECHECK_S / 2 + d["poll-interval"]
    lines = ["<!-- begin: fleet_scale -->",
             "## Hub serving simulated idle devices (issue 4)", "",
             f"Produced by `{command}` on {when}. Machine: {machine_line()}; the hub, the "
             f"simulator (one Python asyncio process) and, for PostgreSQL, the database share "
             f"its cores with each other and with other work: the CPU columns below are per "
             f"process, and 'machine busy' is every process on the machine over the window.", "",
             "Method: one hub at its default settings (`outpost-hub serve --data DIR [--db URL]`: "
             f"parked polls re-checked every {fmt_s(HUB_RECHECK_S)}, rollout tick 1 s); N devices "
             "enrolled through `POST /api/v1/device/enroll` (one bootstrap token with uses=N, "
             "sequentially on one connection); then each device, like an idle agent at default "
             "settings, keeps one HTTPS connection with a long poll open (`GET "
             f"/api/v1/device/desired?wait={d['hub-wait']:g}` with If-None-Match, "
             f"{fmt_s(d['poll-interval'])} between polls) and posts a telemetry batch of the "
             "agent's shape (12 samples, uncompressed JSON like the agent's) every "
             f"{fmt_s(d['telemetry-interval'])} (the first at a random offset) on a second "
             "connection, reopened when the hub has closed it in between (as the agent's HTTP client does). "
             "Devices connect at 100/s. r1 is rolled out to all (waves 1, 10%, 100%, soak 0; "
             "simulated devices report `committed` without downloading); then after a settle "
             "period the window measures steady idling: hub CPU = utime + stime from "
             "/proc/PID/stat over the window, RSS = VmRSS every 5 s.", "",
             "| database | devices | enrol (total, p50 / p99 each) | rollout push -> 100% | "
             "window | hub CPU (% of one core) | hub RSS median / max | hub RSS empty | "
             "postgres CPU, PSS | simulator CPU | machine busy |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: |"]
    for r in results:
        p = r["processes"]
        el = r["enroll_latency_ms"]
        pgc = "–"
        if "postgres" in p:
            pss = r["rss"].get("postgres (PSS, all processes)", {})
            pgc = f"{p['postgres']['cpu_pct']:.1f}%, {mib(pss.get('median_kb', 0))}"
        rss = r["rss"]["hub"]
        lines.append(
            f"| {r['db']} | {r['devices']} | {r['enroll_s']:.1f} s ({el['p50']:.1f} / "
            f"{el['p99']:.1f} ms) | {r['rollout']['push_to_done_s']:.1f} s "
            f"({r['rollout']['state']}) | {r['wall_s']:.0f} s | **{p['hub']['cpu_pct']:.1f}%** "
            f"({p['hub']['cpu_s']:.1f} s) | **{mib(rss['median_kb'])}** / {mib(rss['max_kb'])} | "
            f"{mib(r['hub_rss_empty_kb'])} | {pgc} | {p['simulator']['cpu_pct']:.1f}% | "
            f"{r['machine_busy_cores']:.2f} cores |")
    lines += ["", "Requests completed in the window (hub's answers, as the simulator saw them):",
              "", "| database | request | answer | count | per s | latency p50 / p95 / max |",
              "| --- | --- | --- | ---: | ---: | --- |"]
    for r in results:
        for key, v in r["requests"].items():
            kind, _, status = key.partition(" ")
            if kind == "connect":
                kind, status = "new connection (TCP + TLS)", "–"
            lat = v["latency_ms"]
            lines.append(f"| {r['db']} | {kind} | {status} | {v['count']} | {v['per_s']:.2f} | "
                         f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['max']:.0f} ms |")
    polls = [v["count"] for r in results for k, v in r["requests"].items()
             if k.startswith("desired 304")]
    lines += ["", f"- `desired 304` latency is the long-poll hold ({fmt_s(d['hub-wait'])} plus the "
              "wait for the next re-check). The rollout answered every parked poll within "
              "seconds, so the fleet's polls stay phase-aligned (as a real fleet's are after a "
              f"rollout or a hub restart): {'/'.join(str(n) for n in polls)} polls completed in "
              f"the window{'s' if len(polls) > 1 else ''}, where the mean rate is one per "
              f"~{cycle:.0f} s per device ({results[0]['devices'] / cycle:.1f} per second for "
              f"{results[0]['devices']} devices).",
              "- Hub memory per device ((RSS median - RSS of the empty hub) / devices): "
              + "; ".join(f"{r['db']} {per_device_kib(r):.0f} KiB" for r in results)
              + ". Each device holds one connection (the long poll) and, part of the time, a "
                "second one (the heartbeat's, until the hub's idle timeout closes it).",
              "- Hub threads / open file descriptors at the end of the window: "
              + "; ".join(f"{r['db']} {r['hub_threads']} / {r['hub_fds']}" for r in results) + ".",
              "<!-- end: fleet_scale -->"]
    return "\n".join(lines)


def render_rollout(r, command, when):
    d = r.get("defaults", OLD_DEFAULTS)
    runs = r["runs"]
    lines = ["<!-- begin: fleet_rollout -->",
             "## Five-device rollout: push to 100% (issue 4)", "",
             f"Produced by `{command}` on {when}. Machine: {machine_line()}; shared (load "
             f"average before / after: {r['loadavg_start']} / {r['loadavg_end']}).", ""]
    if runs:
        med = statistics.median(x["push_to_100pct_s"] for x in runs)
        lines += [f"Default settings everywhere except the rollout's soak: a hub at its "
                  f"defaults, five real devices (outpost-agent + outpost-serve) at the agent's "
                  f"defaults (long poll {fmt_s(d['hub-wait'])}, status reports every "
                  f"{fmt_s(d['report-interval'])}, agent soak {fmt_s(d['soak'])} before each "
                  f"commit), the release (add_one, a few kB) pushed, then a rollout with waves "
                  f"[1, 50%, 100%] and `soak_s` 1; the clock runs from the push to the rollout's "
                  f"`completed`. Each wave costs at least the agent's {fmt_s(d['soak'])} soak, so "
                  f"three waves cannot take less than ~{3 * d['soak']:g} s. Runs are successive "
                  f"releases on the same fleet (the first installs from nothing).", "",
                  "| release | state | push -> 100% | downloads start | commits | the hub hears "
                  "of them |",
                  "| --- | --- | ---: | --- | --- | --- |"]
        for x in runs:
            heard = x.get("heard_s")
            lines.append(f"| {x['release']} | {x['state']} | {x['push_to_100pct_s']:.1f} s | "
                         f"{', '.join(f'{c:.1f}' for c in x['downloads_s'])} | "
                         f"{', '.join(f'{c:.1f}' for c in x['commits_s'])} | "
                         + (", ".join(f"{c:.1f}" for c in heard) if heard else "–") + " |")
        lags = [v for x in runs for v in x["commit_report_lag_s"]]
        each = ", ".join(f"{x['push_to_100pct_s']:.1f}" for x in runs)
        lines += ["", "Times in seconds after the push: downloads start and commits are the "
                  "agents' events (their clocks, put on the hub's by the measured offset); the "
                  "hub hearing of a commit is when its rollout's committed count went up "
                  "(polled every 0.2 s).", "",
                  f"Median push -> 100%: **{med:.1f} s** ({len(runs)} runs: {each} s)."]
        if lags and any(x.get("heard_s") for x in runs):
            lines.append(f"Between an agent's commit and the hub hearing of it: median "
                         f"{statistics.median(lags):.1f} s, max {max(lags):.1f} s: status "
                         f"reports go out on the agent's {fmt_s(d['report-interval'])} "
                         f"--report-interval tick, and each wave waits for that.")
    e2e = r.get("e2e")
    if e2e:
        t = (e2e.get("timings") or {}).get("r1_push_to_100pct_s")
        lines += ["", f"The e2e suite's figure (`{e2e['command']}` with OUTPOST_*_BIN from the "
                  f"same "
                  f"build): waves [1, 50%, 100%], rollout soak 1 s, agents with test intervals "
                  f"(`--soak 1 --hub-wait 5 --report-interval 0.5 --telemetry-interval 1`), hub "
                  f"with `--rollout-tick 0.2 --long-poll-recheck 0.5`; clock from after the push "
                  f"to `completed`: **{t} s** (one run; test exit code {e2e['returncode']})."]
    lines.append("<!-- end: fleet_rollout -->")
    return "\n".join(lines)


def build_source(build):
    """What the binaries were built from: the git revision of the build's
    source directory (and whether it had uncommitted changes), else its path."""
    src = None
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CMAKE_HOME_DIRECTORY:"):
                    src = line.split("=", 1)[1].strip()
    except OSError:
        return "unknown sources"
    if src is None:
        return "unknown sources"
    rev = subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True)
    if rev.returncode != 0:
        return f"sources in {src}"
    dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return f"revision {rev.stdout.strip()}" + (" with uncommitted changes" if dirty else "")


def render_all(results, fallback_when=None):
    sections = {}
    when = results.get("when", {})
    source = results.get("build_source") or "unknown sources"
    for phase, name, fn in (("idle", "fleet_idle", render_idle),
                            ("scale", "fleet_scale", render_scale),
                            ("rollout", "fleet_rollout", render_rollout)):
        if phase in results:
            sections[name] = fn(results[phase], results["command"],
                                f"{when.get(phase) or fallback_when} (binaries built from "
                                f"{source})")
    return sections


def resolve_build(build):
    if not os.path.isdir(build) and not os.path.isabs(build):
        build = os.path.join(ROOT, build)  # relative to the repository
    return os.path.abspath(build)


def render_saved(args):
    with open(args.render) as f:
        results = json.load(f)
    if args.build_source:
        results["build_source"] = args.build_source
    elif not results.get("build_source"):
        results["build_source"] = build_source(resolve_build(args.build))
    traffic = results.get("idle", {}).get("traffic", {})
    if "t0" in traffic:
        classify_traffic(traffic)  # with this version's rules
    mtime = datetime.datetime.fromtimestamp(os.path.getmtime(args.render), datetime.timezone.utc)
    sections = render_all(results, mtime.strftime("%Y-%m-%d %H:%M UTC"))
    for body in sections.values():
        print(body + "\n")
    if args.write_results:
        write_sections(sections)
        log(f"wrote {', '.join(sections)} in {RESULTS}")


def write_sections(sections):
    with open(RESULTS) as f:
        text = f.read()
    for name, body in sections.items():
        begin, end = f"<!-- begin: {name} -->", f"<!-- end: {name} -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + body + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + body + "\n"
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, RESULTS)


# ---------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="build", help="build directory (src/*/ binaries, "
                   "test-models)")
    p.add_argument("--phases", default="idle,scale,rollout")
    p.add_argument("--idle-window", type=float, help="seconds (default: two heartbeat intervals "
                   "+ 60 s, so that the window holds at least two heartbeats)")
    p.add_argument("--idle-settle", type=float, default=60)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--scale-window", type=float, help="seconds (default: one heartbeat "
                   "interval, so that every simulated device sends one heartbeat in it)")
    p.add_argument("--scale-settle", type=float, default=30)
    p.add_argument("--scale-db", default="sqlite,postgres")
    p.add_argument("--ramp", type=float, default=100, help="simulated devices connecting per s")
    p.add_argument("--rollout-runs", type=int, default=3)
    p.add_argument("--no-e2e", action="store_true", help="skip tests/e2e/test_fleet.py test_1")
    p.add_argument("--write-results", action="store_true")
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--keep", action="store_true", help="keep temporary directories")
    p.add_argument("--build-source", help="what the binaries were built from, for the report "
                   "(default: the git revision of the build's source directory)")
    p.add_argument("--render", metavar="JSON", help="only rewrite the report sections from the "
                   "raw results of an earlier run (its --json file; with --write-results)")
    p.add_argument("--simulate", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.simulate:
        return simulate(args.simulate)
    if args.render:
        return render_saved(args)

    build = resolve_build(args.build)
    env = {"OUTPOST_HUB_BIN": "src/hub/outpost-hub", "OUTPOST_AGENT_BIN": "src/agent/outpost-agent",
           "OUTPOST_SERVE_BIN": "src/serve/outpost-serve", "OUTPOST_CLI_BIN": "src/cli/outpost",
           "OUTPOST_TEST_MODELS": "test-models"}
    for k, rel in env.items():
        path = os.path.join(build, rel)
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: build it first (ninja -C {build} outpost-hub "
                     f"outpost-agent outpost-serve outpost test_models)")
        os.environ[k] = path
    bins = fleet.Bins()
    limit = raise_fd_limit(max(4096, args.devices * 3 + 256))
    log(f"file descriptor limit {limit}")
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    command = "python3 bench/fleet_bench.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results = {"command": command, "build_source": args.build_source or build_source(build)}
    when = lambda: datetime.datetime.now(datetime.timezone.utc).strftime(  # noqa: E731
        "%Y-%m-%d %H:%M UTC")
    results["when"] = {}
    if "idle" in phases:
        results["idle"] = phase_idle(args, bins)
        results["when"]["idle"] = when()
    if "scale" in phases:
        results["scale"] = []
        for db in [x.strip() for x in args.scale_db.split(",") if x.strip()]:
            results["scale"].append(phase_scale(args, bins, db))
        results["when"]["scale"] = when()
    if "rollout" in phases:
        results["rollout"] = phase_rollout(args, bins)
        results["when"]["rollout"] = when()
    sections = render_all(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    for body in sections.values():
        print(body + "\n")
    if args.write_results:
        write_sections(sections)
        log(f"wrote {', '.join(sections)} in {RESULTS}")


if __name__ == "__main__":
    main()
