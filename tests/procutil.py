"""Test helpers that run a job's helper for real and look for its processes."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from jobworker.job.process.launcher import LaunchSpec, spawn


def marker() -> str:
    """A `sleep` argument no other process has: `sleep <marker>` runs long."""
    return f"1000.{uuid.uuid4().int % 10**9:09d}"


def processes_with(text: str, *, helpers: bool = True) -> list[int]:
    """The host pids whose command line contains `text`.

    The job's helpers have the whole command in theirs; `helpers=False`
    leaves them out.
    """
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as file:
                    cmdline = file.read()
            except OSError:
                continue
            if text.encode() in cmdline and (helpers or b"helper.py" not in cmdline):
                found.append(int(name))
    return found


def sleepers(tag: str) -> list[int]:
    """The host pids of `sleep <tag>` processes."""
    wanted = b"sleep\0%s\0" % tag.encode()
    found = []
    for pid in processes_with(tag, helpers=False):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if file.read() == wanted:
                    found.append(pid)
        except OSError:
            continue
    return found


async def until_stopped(reactor: Any, pid: int) -> None:
    """Wait (polling /proc, there is no event for it) until `pid` is stopped."""
    while True:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            if stat.read().rsplit(b")", 1)[1].split()[0] == b"T":
                return
        await task.deferLater(reactor, 0.01, lambda: None)


@dataclass
class HelperRun(ProcessProtocol):
    """Collects what a helper process does; `ended` fires when it is gone."""

    report: bytes = b""
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None
    signal: int | None = None
    ended: Deferred[HelperRun] = field(default_factory=Deferred)
    started: Deferred[bytes] = field(default_factory=Deferred)
    printed: dict[bytes, Deferred[None]] = field(default_factory=dict)
    stdin_closed: Deferred[None] = field(default_factory=Deferred)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 3:
            self.report += data
            return
        if childFD == 1:
            self.stdout += data
        else:
            self.stderr += data
        for text, waiter in list(self.printed.items()):
            if text in self.stdout:
                del self.printed[text]
                waiter.callback(None)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == 3:
            self.started.callback(self.report)
        elif childFD == 0:
            self.stdin_closed.callback(None)

    def until_printed(self, text: bytes) -> Deferred[None]:
        """Fire once stdout contains `text`."""
        waiter: Deferred[None] = Deferred()
        if text in self.stdout:
            waiter.callback(None)
        else:
            self.printed[text] = waiter
        return waiter

    def processEnded(self, reason: Failure) -> None:
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        self.ended.callback(self)


def run_helper(reactor: Any, spec: LaunchSpec) -> tuple[HelperRun, Any]:
    """Spawn the helper for `spec`; return the collector and the transport."""
    run = HelperRun()
    return run, spawn(reactor, run, spec)
