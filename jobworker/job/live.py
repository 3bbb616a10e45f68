"""Live restore's files in a job's directory, and how a helper is recognised.

Under `--live-restore` a job's directory holds `live/` (0700, root's: no
job uid can reach it) with the helper's control socket, its pid file
(`<pid> <start time>`, the start time being field 22 of /proc/PID/stat)
and, once the command has ended, its exit file (`<protocol> <wait status>
<log size> <data bytes> <truncated by or ->`). The files' names and the
protocol are the helper's (`jobworker.job.process.keeper`). `verify_helper`
never trusts a pid alone: it pins the pid with a pidfd, then checks the
start time (and the job's cgroup, when it has one) while the pidfd says
the process is still alive, so a recycled pid is never taken for the
helper. See doc/restart.md.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass

from twisted.logger import Logger

from jobworker.job.process.keeper import (
    EXIT_FILE,
    PID_FILE,
    PROTOCOL,
    SOCKET,
    start_time,
)

__all__ = ["ExitRecord", "LiveFiles", "read_exit", "verify_helper", "wait_outcome"]

LIVE_DIR = "live"
_log = Logger()


@dataclass(frozen=True)
class LiveFiles:
    """The live-restore files of one job."""

    directory: str

    @classmethod
    def of(cls, job_dir: str) -> LiveFiles:
        return cls(os.path.join(job_dir, LIVE_DIR))

    @property
    def socket(self) -> str:
        return os.path.join(self.directory, SOCKET)

    @property
    def pid_file(self) -> str:
        return os.path.join(self.directory, PID_FILE)

    @property
    def exit_file(self) -> str:
        return os.path.join(self.directory, EXIT_FILE)

    def helper_config(self, log: str, cap: int) -> dict[str, object]:
        """What the helper's keeper needs (`LaunchSpec.live`)."""
        return {"dir": self.directory, "log": log, "cap": cap}

    def make(self) -> None:
        """Create the directory, root's alone."""
        os.mkdir(self.directory, 0o700)
        os.chmod(self.directory, 0o700)


@dataclass(frozen=True)
class ExitRecord:
    """What a helper wrote when its command had ended."""

    wait_status: int
    log_size: int
    data_bytes: int
    truncated_by: str


def wait_outcome(wait_status: int) -> tuple[int | None, int | None]:
    """(exit code, None) or (None, signal) of a wait status."""
    if os.WIFSIGNALED(wait_status):
        return None, os.WTERMSIG(wait_status)
    return (os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else 1), None


def read_exit(files: LiveFiles) -> ExitRecord | None:
    """The helper's exit file; None if there is none (or it makes no sense)."""
    try:
        with open(files.exit_file, "rb") as exit_file:
            text = exit_file.read(4096).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    words = text.rstrip("\n").split(" ", 4)
    try:
        numbers = [int(word) for word in words[:4]]
    except ValueError:
        numbers = []
    if len(words) != 5 or len(numbers) != 4 or numbers[0] != PROTOCOL:
        _log.warn(
            "{path}: ignored: not an exit file of protocol {protocol}",
            path=files.exit_file,
            protocol=PROTOCOL,
        )
        return None
    why = "" if words[4] == "-" else words[4]
    return ExitRecord(numbers[1], numbers[2], numbers[3], why)


def verify_helper(
    files: LiveFiles, procs_files: Iterable[str] = ()
) -> tuple[int, int] | None:
    """The pid and a pidfd of the job's helper if it still runs, else None.

    The pid file's pid must be alive with the recorded start time, and in
    the job's cgroup when `procs_files` names it.
    """
    try:
        with open(files.pid_file) as pid_file:
            pid_text, recorded = pid_file.read().split()
        pid = int(pid_text)
        fd = os.pidfd_open(pid)
    except (OSError, ValueError):
        return None
    try:
        same = start_time(pid) == recorded and _in_cgroups(pid, procs_files)
        same = same and _state(pid) not in (b"Z", b"X")  # not a zombie
        signal.pidfd_send_signal(fd, 0)  # still that process: the pid is pinned
    except OSError:
        same = False
    if not same:
        os.close(fd)
        return None
    return pid, fd


def _state(pid: int) -> bytes:
    """Field 3 of /proc/PID/stat: R, S, D, Z (a zombie)..."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().rsplit(b")", 1)[1].split()[0]


def _in_cgroups(pid: int, procs_files: Iterable[str]) -> bool:
    for path in procs_files:
        with open(path) as procs:
            if str(pid) not in procs.read().split():
                return False
    return True
