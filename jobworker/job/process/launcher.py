"""Spawning a job's helper, and reading its start report.

The helper (jobworker/job/process/helper.py) is started as Twisted's `Process` (a
`JobProcess`, which reads output in large pieces) and never with uid, gid
or path, so Twisted stays on its `posix_spawnp` path (a fork() of a process
running grpcio is unsafe). Stdin is /dev/null, or a pipe from the server
for a job started with stdin (`job/stdin.py`); fds 1
and 2 are the output pipes, fd 3 the close-on-exec status pipe: EOF with no
data means the command was exec'd, a line "<kind> <detail>" says why not.
Under live restore fds 1 and 2 are /dev/null: the helper has pipes of its
own for the command's output (`keeper.py`).
"""

from __future__ import annotations

import marshal
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ProcessProtocol

from jobworker.errors import (
    BadUser,
    BadWorkingDirectory,
    ExecutableNotFound,
    IsolationFailed,
    NotExecutable,
    StartFailed,
)
from jobworker.job.environment import JOB_PATH
from jobworker.job.process.pipes import JobProcess
from jobworker.job.process.protocol import CONFIG_FD, STATUS_FD
from jobworker.job.users import JobUser

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helper.py")
# The helper's own environment. The job's (with its caller's variables,
# LD_PRELOAD for one) reaches only the command's exec: the helper runs as
# root until then. It travels marshalled in JOB_ENV, not in the helper's
# argv: /proc/PID/environ of a root process is root's alone to read, its
# cmdline everyone's, and the caller's variables may be secrets.
HELPER_ENV = {"PATH": JOB_PATH, "LANG": "C.UTF-8"}
JOB_ENV = "JOBWORKER_JOB_ENV"
# A status report longer than this is not from our helper; keep no more.
MAX_REPORT = 4096

_KINDS: dict[str, tuple[type[StartFailed], str]] = {
    "enoent": (ExecutableNotFound, "not found in the job's PATH"),
    "eacces": (NotExecutable, "cannot be executed"),
    "enoexec": (NotExecutable, "is not in an executable format"),
    "cwd": (BadWorkingDirectory, "cannot enter the working directory"),
    "user": (BadUser, "cannot switch to the job user"),
    "isolation": (IsolationFailed, "cannot set up isolation"),
}


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the helper needs to start one job's command."""

    command: tuple[bytes, ...]
    work_dir: str
    env: dict[str, str]
    user: JobUser | None = None
    cgroup_procs: tuple[str, ...] = ()
    namespaces: bool = False
    rootfs: dict[str, object] | None = None
    """The job's private root (jobworker.isolation.rootfs.helper_rootfs)."""
    seccomp: bytes | None = None
    """The syscall filter, a BPF program (jobworker.isolation.seccomp)."""
    stdin: bool = False
    """A pipe from the server as the job's stdin, rather than /dev/null."""
    job_id: str = ""
    """Named in the helper's argv and process names, for `ps` and `top`."""
    live: dict[str, object] | None = None
    """Live restore: the helper keeps the job ("dir": its live directory,
    "log": the output log, "cap": the output cap; `keeper.Keeper`)."""

    def helper_config(self) -> bytes:
        """The helper's configuration, which it reads from fd `CONFIG_FD`.

        A `marshal`led dict: the helper runs on this same interpreter
        (`sys.executable`), and `marshal` is built in, where `json` would
        cost every start its import (about 8 ms here). It is not on the
        command line, so `ps` shows the job id and command, not kilobytes of
        configuration.
        """
        config: dict[str, object] = {
            "parent": os.getpid(),
            "workdir": self.work_dir,
            "cgroup_procs": list(self.cgroup_procs),
            "namespaces": self.namespaces,
            "job_id": self.job_id,
        }
        if self.namespaces and self.rootfs is not None:
            config["rootfs"] = self.rootfs
        if self.seccomp is not None:
            config["seccomp"] = self.seccomp
        if self.live is not None:
            config["live"] = self.live
        if self.user is not None:
            config |= {
                "user": self.user.name,
                "uid": self.user.uid,
                "gid": self.user.gid,
                "groups": list(self.user.groups),
            }
        return marshal.dumps(config)

    def helper_env(self) -> dict[str, str]:
        """The helper's own environment, with the job's marshalled in `JOB_ENV`."""
        return {**HELPER_ENV, JOB_ENV: marshal.dumps(self.env).hex()}

    def helper_argv(self) -> list[bytes]:
        """The helper's argv: interpreter, helper, `job=ID`, `--`, command."""
        return [
            os.fsencode(sys.executable),
            b"-I",
            b"-S",
            os.fsencode(HELPER),
            b"job=" + self.job_id.encode("ascii", "replace"),
            b"--",
            *self.command,
        ]


def config_file(config: bytes) -> int:
    """An anonymous in-memory file holding `config`, read from its start.

    Given to the helper as fd `CONFIG_FD`; the caller closes its own copy
    once the helper is spawned. Nothing is left on disk.
    """
    fd = os.memfd_create("jobworker-helper-config", os.MFD_CLOEXEC)
    try:
        os.write(fd, config)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def spawn(
    reactor: IReactorProcess, protocol: ProcessProtocol, spec: LaunchSpec
) -> IProcessTransport:
    """Start the helper for `spec`; return the process transport.

    On Twisted's POSIX reactors this is a `JobProcess` (exactly what
    `spawnProcess` makes, with larger output reads); any other reactor (a
    test's fake) is asked to `spawnProcess` the same way. Raises
    `StartFailed` if the helper itself cannot be started.
    """
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    config = -1
    try:
        config = config_file(spec.helper_config())
        argv = spec.helper_argv()
        stdin: int | str = "w" if spec.stdin else devnull
        # Under live restore the helper reads the command's output itself.
        output: int | str = "r" if spec.live is None else devnull
        child_fds: dict[int, int | str] = {
            0: stdin,
            1: output,
            2: output,
            STATUS_FD: "r",
            CONFIG_FD: config,
        }
        if isinstance(reactor, PosixReactorBase):
            return JobProcess(  # type: ignore[no-untyped-call]  # Twisted: unannotated
                reactor,
                argv[0],
                argv,
                spec.helper_env(),
                None,
                protocol,
                None,
                None,
                child_fds,
            )
        return reactor.spawnProcess(
            protocol, argv[0], argv, env=spec.helper_env(), childFDs=child_fds
        )
    except OSError as e:
        raise StartFailed(f"cannot start the job helper: {e.strerror}") from None
    finally:
        os.close(devnull)
        if config >= 0:
            os.close(config)


def start_error(report: bytes, command: Sequence[bytes]) -> StartFailed:
    """The precise `StartFailed` for a helper's status report."""
    text = report[:MAX_REPORT].decode("utf-8", "replace").strip()
    kind, _, detail = text.partition(" ")
    program = os.fsdecode(command[0]) if command else ""
    error_class, what = _KINDS.get(kind, (StartFailed, "cannot be started"))
    if error_class is ExecutableNotFound and "/" in program:
        # A path is not looked up in PATH; a relative one is the job's.
        if program.startswith("/"):
            return error_class(f"{program!r} not found")
        return error_class(
            f"{program!r} not found: a relative path is looked up in the job's"
            " working directory, not the caller's"
        )
    if error_class in (ExecutableNotFound, NotExecutable):
        return error_class(f"{program!r} {what}")
    return error_class(f"{program!r} {what}: {detail or text}")
