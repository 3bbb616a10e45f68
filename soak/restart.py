"""Phase 6: the server restarted on its state dir, with jobs running (issue 15).

For each `Mode`: jobs that finished before (random bytes, hashed) and
`RUNNING` jobs that write numbered ticks; the server is signalled and
started again on the same state directory. Finished jobs must come back
with their exact status and output; each running job with the ending the
mode says is honest, and its output readable, without a gap, as far as it
was written; nothing of them may be left (cgroups, processes, mounts, work
directories).

The `--live-restore` modes run the server with that option before and
after the signal: every running job must come back `RUNNING` (re-adopted),
have written on while no server ran, and, once stopped, show every tick
from the first, none lost or repeated, its final status `KILLED` (or
exited by its TERM trap) with `stop_requested`.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobworker.v1 import jobworker_pb2 as pb
from soak.client import Clients, collect
from soak.disconnects import TICKER, start
from soak.faults import DEATH_TIMEOUT, first_chunk, wait_dead
from soak.server import ServerProcess, alive, descendants
from soak.system import job_cgroups, mounts_under, stray_processes, work_dirs

FINISHED = 10
CALL_TIMEOUT = 60.0
BINARY = "head -c 100000 /dev/urandom"


@dataclass(frozen=True)
class Mode:
    """How the server goes down and what a running job must come back as."""

    name: str
    signal: int
    expect: Callable[[pb.JobStatus], str | None]
    options: tuple[str, ...] = ()
    live: bool = False
    """The jobs outlive the server: it runs with `options` before, too."""


def lost(job: pb.JobStatus) -> str | None:
    """Nobody saw the end of a job of a SIGKILLed server: LOST."""
    if job.state != pb.JOB_STATE_LOST or job.stop_requested:
        return f"came back {pb.JobState.Name(job.state)}, not LOST"
    return None


def killed_on_stop(job: pb.JobStatus) -> str | None:
    """A job the server stopped at its shutdown: KILLED, stop_requested."""
    if job.state != pb.JOB_STATE_KILLED or not job.stop_requested:
        state = pb.JobState.Name(job.state)
        return f"came back {state}, stop_requested={job.stop_requested}"
    return None


def readopted(job: pb.JobStatus) -> str | None:
    """Under live restore a running job is re-adopted: still RUNNING."""
    if job.state != pb.JOB_STATE_RUNNING:
        return f"came back {pb.JobState.Name(job.state)}, not RUNNING"
    return None


LIVE = ("--live-restore",)
MODES = (
    Mode("SIGKILL", signal.SIGKILL, lost),
    Mode("SIGTERM", signal.SIGTERM, killed_on_stop),
    Mode("SIGKILL, --live-restore", signal.SIGKILL, readopted, LIVE, live=True),
    Mode("SIGTERM, --live-restore", signal.SIGTERM, readopted, LIVE, live=True),
)


@dataclass
class Restart:
    """What one mode's restart saw."""

    mode: str
    running: int = 0
    finished: int = 0
    endings: dict[str, int] = field(default_factory=dict)
    ticks: int = 0
    output_bytes: int = 0
    down_seconds: float = 0.0
    left: str = ""
    lost: list[str] = field(default_factory=list)


def hashed_output(stub: Any, job_id: str) -> str:
    request = pb.StreamOutputRequest(job_id=job_id)
    output = collect(stub.StreamOutput(request, timeout=CALL_TIMEOUT))
    return hashlib.sha256(output.stdout + b"\0" + output.stderr).hexdigest()


def status(stub: Any, job_id: str) -> pb.JobStatus:
    job: pb.JobStatus = stub.Status(
        pb.StatusRequest(job_id=job_id), timeout=CALL_TIMEOUT
    ).job
    return job


def finished_jobs(stub: Any) -> dict[str, tuple[pb.JobStatus, str]]:
    """Jobs run to their end: id -> (final status, output hash)."""
    ids = [start(stub, BINARY) for _ in range(FINISHED)]
    return {
        job_id: (status(stub, job_id), hashed_output(stub, job_id)) for job_id in ids
    }


def check_running(
    stub: Any, job_id: str, mode: Mode, result: Restart, before: int
) -> None:
    """The job's honest ending, and its ticks readable without a gap.

    A re-adopted job (`mode.live`) is stopped first; it must have written
    more than the `before` bytes it had when the server went down.
    """
    job = status(stub, job_id)
    ending = pb.JobState.Name(job.state)
    result.endings[ending] = result.endings.get(ending, 0) + 1
    if problem := mode.expect(job):
        result.lost.append(f"running job {job_id}: {problem}")
    if mode.live:
        job = stub.Stop(pb.StopRequest(job_id=job_id), timeout=CALL_TIMEOUT).job
        if problem := killed_on_stop(job):
            result.lost.append(f"re-adopted job {job_id} after its stop: {problem}")
        if not job.stop_requested:
            result.lost.append(f"re-adopted job {job_id}: stop not recorded")
        if job.output_bytes <= before:
            result.lost.append(
                f"re-adopted job {job_id} wrote nothing after the restart"
                f" ({job.output_bytes} bytes, {before} before)"
            )
    request = pb.StreamOutputRequest(job_id=job_id)
    output = collect(stub.StreamOutput(request, timeout=CALL_TIMEOUT))
    ticks = [int(line.split()[1]) for line in output.stdout.splitlines()]
    result.ticks += len(ticks)
    result.output_bytes += len(output.stdout)
    if not ticks or ticks != list(range(len(ticks))):
        result.lost.append(f"running job {job_id}: output has a gap or nothing")
    if len(output.stdout) + len(output.stderr) != job.output_bytes:
        result.lost.append(
            f"running job {job_id}: {len(output.stdout)} bytes read,"
            f" Status says {job.output_bytes}"
        )


def restart(
    server: ServerProcess, clients: Clients, mode: Mode, count: int
) -> tuple[Restart, Clients]:
    """One mode: jobs, the server signalled and restarted, everything checked."""
    result = Restart(mode.name, running=count, finished=FINISHED)
    base = list(server.options)
    if mode.live:  # the jobs must start under a server that lets them live
        clients.close()
        if server.terminate(server.grace + 30)[0] is None:
            server.kill()
        server.options = base + list(mode.options)
        clients = server.start()
    stub = clients.stub("bob")
    before = finished_jobs(stub)
    running = [start(stub, TICKER) for _ in range(count)]
    for job_id in running:
        first_chunk(stub, job_id)
    time.sleep(0.5)  # some more ticks each
    written = {job_id: status(stub, job_id).output_bytes for job_id in running}
    pids = descendants(server.pid)
    # Under live restore the jobs' helpers outlive the server, by design.
    gone = {server.pid} if mode.live else pids
    began = time.monotonic()
    if mode.signal == signal.SIGKILL:
        server.kill()
    elif server.terminate(server.grace + 30)[0] is None:
        server.kill()
        result.lost.append("the server did not exit on SIGTERM")
    clients.close()
    wait_dead(gone, DEATH_TIMEOUT)
    if mode.live:
        time.sleep(0.5)  # the jobs write on while no server runs
    server.options = base + list(mode.options)
    clients = server.start()
    server.options = base
    result.down_seconds = time.monotonic() - began
    stub = clients.stub("bob")
    for job_id, (old, digest) in before.items():
        if status(stub, job_id) != old or hashed_output(stub, job_id) != digest:
            result.lost.append(f"finished job {job_id} came back changed")
    for job_id in running:
        check_running(stub, job_id, mode, result, written[job_id])
    ours = set(running) | set(before)
    jobs_dir = os.path.join(server.state_dir, "jobs")
    left = {
        "cgroups": len(job_cgroups(server.state_dir) & ours),
        "processes": len(alive(pids)) + len(stray_processes(server.state_dir)),
        "mounts": len(mounts_under(server.state_dir)),
        "work dirs": len(
            [
                d
                for d in work_dirs(server.state_dir)
                if os.path.relpath(d, jobs_dir).split(os.sep)[0] in ours
            ]
        ),
    }
    result.left = ", ".join(f"{n} {what}" for what, n in left.items())
    if any(left.values()):
        result.lost.append(f"left behind after the restart: {result.left}")
    return result, clients


def run(server: ServerProcess, count: int) -> list[Restart]:
    """Every mode in turn on the (stopped) soak server; stopped again after."""
    results = []
    clients = server.start()
    try:
        for mode in MODES:
            result, clients = restart(server, clients, mode, count)
            results.append(result)
    finally:
        clients.close()
        if server.terminate(server.grace + 30)[0] is None:
            server.kill()
    return results
