"""A throwaway PostgreSQL 15 server for tests: initdb into a temporary
directory, postgres on a free loopback port (unix socket in the same
directory), trust authentication for the local test user. As root the
server runs as the `postgres` user the Debian package creates (postgres
refuses to run as root). Stopped with SIGINT (fast shutdown).
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

BINDIR = os.environ.get("OUTPOST_PG_BINDIR", "/usr/lib/postgresql/15/bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        # Its own directory under /tmp: the postgres user must be able to
        # reach it, which a test's private 0700 temporary directory forbids.
        self.dir = tempfile.mkdtemp(prefix="outpost-pg-")
        self.data = os.path.join(self.dir, "data")
        self.proc = None
        self.port = None

    def _demote(self):
        if os.geteuid() != 0:
            return None, None
        user = pwd.getpwnam("postgres")
        return user.pw_uid, user.pw_gid

    def _run_as(self, cmd, log):
        uid, gid = self._demote()

        def preexec():
            if uid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec,
                                cwd=self.dir)

    def start(self):
        if not os.path.exists(os.path.join(BINDIR, "postgres")):
            raise RuntimeError(f"no PostgreSQL in {BINDIR}: scripts/deps.sh installs postgresql-15")
        os.makedirs(self.dir, exist_ok=True)
        uid, gid = self._demote()
        if uid is not None:
            os.chown(self.dir, uid, gid)
        log_path = os.path.join(self.dir, "postgres.log")
        with open(log_path, "ab") as log:
            initdb = self._run_as([os.path.join(BINDIR, "initdb"), "-D", self.data, "-U", "outpost",
                                   "-A", "trust", "--no-sync"], log)
            if initdb.wait(timeout=120) != 0:
                raise RuntimeError(f"initdb failed: see {log_path}")
            self.port = free_port()
            self.proc = self._run_as(
                [os.path.join(BINDIR, "postgres"), "-D", self.data, "-p", str(self.port),
                 "-k", self.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "max_connections=200"], log)
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run([os.path.join(BINDIR, "pg_isready"), "-q", "-h", "127.0.0.1",
                                    "-p", str(self.port), "-U", "outpost"])
            if ready.returncode == 0:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: see {log_path}")
            time.sleep(0.1)
        return f"postgres://outpost@127.0.0.1:{self.port}/postgres"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
