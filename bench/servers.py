"""Server processes for the benchmarks: the shipped twistd server and the bare one.

`JobWorkerProcess` runs `twistd -n jobworker` (the real plugin) in its own
process and, when stopped, proves it left nothing behind: no process that
mentions its state dir and no cgroup named after it. `BareProcess` runs
`bench.bare`. Both give an `Endpoint` for clients and their pid for
`/proc` figures (RSS, peak RSS, CPU time).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from bench.common import Endpoint, grpc, open_channel
from jobworker.isolation.cgroups import parent_name
from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc

BIN = os.path.dirname(sys.executable)
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 90.0
CGROUP_ROOT = "/sys/fs/cgroup"


class BenchError(Exception):
    """A benchmark cannot go on; the message says why."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def client_endpoint(address: str, pki: str, name: str = "alice") -> Endpoint:
    return Endpoint(
        address,
        os.path.join(pki, "server-ca.pem"),
        os.path.join(pki, f"{name}.pem"),
        os.path.join(pki, f"{name}.key"),
    )


def _status_field(pid: int, name: str) -> int:
    """A `kB` field of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no {name} for process {pid}")


class ServerProcess:
    """A server running in its own process."""

    pid: int
    endpoint: Endpoint
    _process: subprocess.Popen[Any]

    def _terminate(self) -> None:
        """SIGTERM, and SIGKILL if it has not ended in time."""
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def rss(self) -> int:
        """Resident memory now, in bytes."""
        return _status_field(self.pid, "VmRSS")

    def peak_rss(self) -> int:
        """Peak resident memory since start or `reset_peak`, in bytes."""
        return _status_field(self.pid, "VmHWM")

    def reset_peak(self) -> None:
        with open(f"/proc/{self.pid}/clear_refs", "w") as clear:
            clear.write("5")

    def cpu_seconds(self) -> float:
        """User plus system CPU time used so far (all threads)."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BareProcess(ServerProcess):
    """`bench.bare`: grpcio alone, over the same mTLS."""

    def __init__(self, pki: str, threads: int) -> None:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bare",
                os.path.join(pki, "server.pem"),
                os.path.join(pki, "server.key"),
                os.path.join(pki, "client-ca.pem"),
                str(threads),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().split()
        if len(line) != 2 or line[0] != "port":
            self._process.kill()
            raise BenchError(f"the bare server did not start: {line}")
        self.pid = self._process.pid
        self.endpoint = client_endpoint(f"127.0.0.1:{line[1]}", pki)

    def stop(self) -> None:
        self._terminate()


class JobWorkerProcess(ServerProcess):
    """`twistd -n jobworker` with a state dir of its own below `work`."""

    def __init__(
        self,
        pki: str,
        work: str,
        name: str,
        *,
        isolation: bool,
        max_followers: int,
        options: tuple[str, ...] = (),
    ) -> None:
        """`options` are more server options (`--live-restore`)."""
        self.state_dir = os.path.join(work, f"state-{name}")
        self.log_path = os.path.join(work, f"server-{name}.log")
        address = f"127.0.0.1:{free_port()}"
        argv = [
            os.path.join(BIN, "twistd"),
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "jobworker",
            f"--listen={address}",
            f"--tls-cert={os.path.join(pki, 'server.pem')}",
            f"--tls-key={os.path.join(pki, 'server.key')}",
            f"--client-ca={os.path.join(pki, 'client-ca.pem')}",
            f"--state-dir={self.state_dir}",
            "--stop-grace=2",
            f"--max-followers={max_followers}",
            # The figures measure the server's cost per job, follower and
            # byte, one client identity driving it all: the per-user caps
            # (issue 14) would refuse the scale run, so they are lifted here.
            "--max-jobs-per-user=100000",
            f"--max-followers-per-user={max_followers}",
            "--user-output-quota=unlimited",
        ]
        if not isolation:
            argv.append("--no-isolation")
        argv += options
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        self.pid = self._process.pid
        self.endpoint = client_endpoint(address, pki)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(f"the server exited; see {self.log_path}")
            try:
                channel = open_channel(self.endpoint, timeout=1.0)
            except grpc.FutureTimeoutError:
                continue
            with channel:
                pb_grpc.JobWorkerStub(channel).List(pb.ListRequest())
            return
        self._process.kill()
        raise BenchError(f"the server did not answer in time; see {self.log_path}")

    def stop(self) -> list[str]:
        """Stop the server (it stops its jobs); return what it left behind."""
        self._terminate()
        left = self.leftovers()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return left

    def leftovers(self) -> list[str]:
        """Processes and cgroups of this server that still exist."""
        found: list[str] = []
        marker = os.fsencode(self.state_dir)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if marker in cmdline.read():
                        found.append(f"process {entry}")
            except OSError:
                continue
        name = parent_name(self.state_dir)
        for top, dirs, _ in os.walk(CGROUP_ROOT):
            if name in dirs:
                found.append(f"cgroup {os.path.join(top, name)}")
                dirs.remove(name)
        return found
