#!/usr/bin/env python3
"""A device that reaches its hub only through an HTTP proxy (docs/agent.md,
"Proxies"): a real outpost-hub, a real outpost-agent with `https_proxy`
pointing at Debian's tinyproxy (which requires Basic credentials), and the
`outpost` CLI through the same proxy.

Loopback is always reached directly, so the hub is addressed by this
machine's own non-loopback IPv4 address (the hub listens on 0.0.0.0 and
names that address in its certificate). Skipped (exit 77) without
tinyproxy (scripts/deps.sh installs tinyproxy-bin) or without such an
address.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402

TINYPROXY = "/usr/bin/tinyproxy"
ANSWER = [2.0, 3.0, 4.0, 5.0]


def own_ipv4():
    """This machine's first non-loopback IPv4 address, or None."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout
    except OSError:
        return None
    for word in out.split():
        if "." in word and not word.startswith("127."):
            return word
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Tinyproxy:
    """tinyproxy in the foreground on 127.0.0.1, logging each request line."""

    def __init__(self, root, basic_auth):
        self.dir = os.path.join(root, "tinyproxy")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o777)  # it may drop to nobody before logging
        self.log = os.path.join(self.dir, "tinyproxy.log")
        self.port = free_port()
        conf = os.path.join(self.dir, "tinyproxy.conf")
        with open(conf, "w") as f:
            f.write(f"Port {self.port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\n"
                    f'LogFile "{self.log}"\nLogLevel Info\nBasicAuth {basic_auth}\n')
        self.proc = subprocess.Popen([TINYPROXY, "-d", "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def accepting():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        fleet.wait_for(accepting, 10, "tinyproxy to listen")

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


class ProxyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(TINYPROXY, os.X_OK):
            print(f"skipped: {TINYPROXY} is not installed (scripts/deps.sh)", file=sys.stderr)
            sys.exit(77)
        cls.ip = own_ipv4()
        if not cls.ip:
            print("skipped: this machine has no non-loopback IPv4 address", file=sys.stderr)
            sys.exit(77)
        cls.bins = fleet.Bins()
        cls.tmp = tempfile.TemporaryDirectory(prefix="outpost-proxy-")
        root = cls.tmp.name
        cls.releases = fleet.Releases(cls.bins, root)
        cls.releases.build("r1", 10, version=1, expect=1.0)
        cls.proxy = Tinyproxy(root, "device s3cret")
        cls.hub = fleet.Hub(cls.bins, root)
        cls.hub.create_admin_token()
        cls.hub.trust(cls.releases.public_key)
        port = free_port()
        cls.hub_url = f"https://{cls.ip}:{port}"
        cls.hub.extra_args = ["--listen", "0.0.0.0", "--tls-name", cls.ip,
                              "--public-url", cls.hub_url]
        cls.hub.start(port)
        cls.device = fleet.Device(cls.bins, root, "behind-proxy", cls.hub)
        shutil.copy(cls.releases.public_key, cls.device.trust)
        cls.hub.bootstrap_file(cls.device.bootstrap, cls.device.id)
        cls.device.env = {"https_proxy": f"http://device:s3cret@127.0.0.1:{cls.proxy.port}",
                          "HTTPS_PROXY": "", "no_proxy": "", "NO_PROXY": ""}
        cls.device.start()

    @classmethod
    def tearDownClass(cls):
        cls.device.stop()
        cls.hub.stop()
        cls.proxy.stop()
        cls.tmp.cleanup()

    def run(self, result=None):
        failures = len(result.failures) + len(result.errors) if result else 0
        outcome = super().run(result)
        if result and len(result.failures) + len(result.errors) > failures:
            print(f"--- hub log (tail)\n{self.hub.log_text()[-4000:]}", file=sys.stderr)
            print(f"--- agent log (tail)\n{self.device.log_text()[-4000:]}", file=sys.stderr)
            print(f"--- tinyproxy log (tail)\n{self.proxy.log_text()[-4000:]}", file=sys.stderr)
        return outcome

    def test_1_device_enrols_and_installs_a_release_through_the_proxy(self):
        def online():
            status, body = self.hub.api("GET", f"/api/v1/admin/devices/{self.device.id}")
            return status == 200 and body["online"]
        fleet.wait_for(online, 60, "the device enrolled and online through the proxy")
        self.hub.push(self.releases.paths["r1"])
        self.hub.rollout("r1", ["100%"], soak=1)
        fleet.wait_for(lambda: (self.device.agent_state().get("committed") or {}).get("release") == "r1", 120,
                       "the device committed r1 (bundle downloaded through the proxy)")
        fleet.wait_for(lambda: self.device.infer() == ANSWER, 30, "the device to answer")
        log = self.proxy.log_text()
        self.assertIn(f"CONNECT {self.ip}:{self.hub.port}", log)
        # Only tunnels: the proxy never saw a device API path.
        self.assertNotIn("/api/v1", log)

    def test_2_cli_goes_through_the_proxy_and_reports_a_refusal(self):
        env = dict(os.environ)
        env.update({"no_proxy": "", "NO_PROXY": "", "HTTPS_PROXY": "",
                    "https_proxy": f"http://device:s3cret@127.0.0.1:{self.proxy.port}"})
        args = [self.bins.cli, "whoami", "--hub", self.hub_url, "--token", self.hub.token,
                "--ca-file", self.hub.ca]
        ok = subprocess.run(args, capture_output=True, text=True, env=env)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        env["https_proxy"] = f"http://device:wrong@127.0.0.1:{self.proxy.port}"
        refused = subprocess.run(args, capture_output=True, text=True, env=env)
        self.assertEqual(refused.returncode, 3, refused.stderr)
        self.assertIn("proxy authentication failed", refused.stderr)
        self.assertNotIn("wrong", refused.stderr)
        env["https_proxy"] = "socks5://127.0.0.1:1080"
        bad = subprocess.run(args, capture_output=True, text=True, env=env)
        self.assertEqual(bad.returncode, 2, bad.stderr)
        self.assertIn("https_proxy='socks5://127.0.0.1:1080'", bad.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
