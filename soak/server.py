"""The server under test: `twistd -n jobworker` in its own process, and its vitals.

`ServerProcess` makes a PKI once, starts the real server on 127.0.0.1 with
full isolation, waits until it answers over mTLS, and measures its threads,
open fds and RSS from /proc/<pid>. It also finds every process that
descends from the server, so the faults can prove none of them survives.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from jobworker import pki
from soak.client import Clients
from soak.load import OUTPUT_CAP

READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Vitals:
    """What /proc says about a process at one moment."""

    threads: int
    fds: int
    rss_kib: int


def vitals(pid: int) -> Vitals:
    """Threads, open fds and resident memory of `pid`."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return Vitals(
        threads=int(fields["Threads"]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        rss_kib=int(fields["VmRSS"].split()[0]),
    )


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[1])


def descendants(root: int) -> set[int]:
    """Every live (non-zombie) process below `root`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[0] != "Z":
                children.setdefault(stat[1], []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    """The pids that are still running (zombies count as dead)."""
    return {pid for pid in pids if (stat := proc_stat(pid)) and stat[0] != "Z"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def make_pki(directory: str, users: list[str]) -> None:
    """The development PKI plus one `user` certificate per soak client."""
    pki.init(directory)
    for name in users:
        pki.issue(directory, name, "user")


class ServerProcess:
    """One run of `twistd -n jobworker` with its own log.

    `options` are more server options (a phase's caps); `name` tells the
    logs of several servers of one soak apart.
    """

    def __init__(
        self,
        work: str,
        pki_dir: str,
        state_dir: str,
        grace: float,
        *,
        options: Sequence[str] = (),
        name: str = "main",
    ) -> None:
        self.work, self.pki_dir, self.state_dir = work, pki_dir, state_dir
        self.grace = grace
        self.options = list(options)
        self.name = name
        self.output_cap = OUTPUT_CAP
        self.port = free_port()
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = ""

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server is not running")
        return self.process.pid

    def start(self) -> Clients:
        """Start the server; return clients once it answers."""
        self.runs += 1
        self.log_path = os.path.join(self.work, f"server-{self.name}-{self.runs}.log")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        p = self.pki_dir
        argv = [
            twistd, "-n", "--pidfile=", f"--logfile={self.log_path}", "jobworker",
            "--listen", f"127.0.0.1:{self.port}",
            "--tls-cert", f"{p}/server.pem", "--tls-key", f"{p}/server.key",
            "--client-ca", f"{p}/client-ca.pem", "--state-dir", self.state_dir,
            "--stop-grace", str(self.grace), "--max-followers", "64",
            "--output-cap", str(self.output_cap), *self.options,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, start_new_session=True
        )
        clients = Clients(f"localhost:{self.port}", self.pki_dir)
        deadline = time.monotonic() + READY_TIMEOUT
        while not clients.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                clients.close()
                raise RuntimeError(f"the server did not start; see {self.log_path}")
            time.sleep(0.2)
        return clients

    def vitals(self) -> Vitals:
        return vitals(self.pid)

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        process = self.process
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM; (exit status or None if still running, seconds taken)."""
        process = self.process
        if process is None:
            return None, 0.0
        begin = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - begin
        return code, time.monotonic() - begin

    def log_text(self) -> str:
        with open(self.log_path, errors="replace") as log:
            return log.read()
