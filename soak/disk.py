"""Phase 8: a full disk, on a small tmpfs state directory of a server of its own.

The server keeps `FLOOR` free (`--min-free-disk`). Past it, running jobs
stop storing output (truncated, the cap named in the log) and every Start
is RESOURCE_EXHAUSTED naming min-free-disk; then the disk is filled to the
last byte behind the server's back (ENOSPC for its journal) while a job is
stopped. The server must answer throughout, serve every log as far as it
was stored, start jobs again once space is back, and come back after a
restart with the same statuses and output.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from jobworker.cli.client import list_all
from jobworker.v1 import jobworker_pb2 as pb
from soak.client import Clients, collect
from soak.disconnects import TICKER, start
from soak.faults import first_chunk
from soak.flood import CALL_TIMEOUT, SLEEPER, refusal, stopped
from soak.load import SIGPIPE
from soak.server import ServerProcess
from soak.system import Leftovers

MiB = 1 << 20
SIZE = 64 * MiB
FLOOR = 32 * MiB
# Output the flood job may still store before the floor.
ROOM = 4 * MiB
OPTIONS = (f"--min-free-disk={FLOOR >> 20}M", "--user-output-quota=unlimited")
FLOOD = "exec head -c 268435456 /dev/zero"
END_WAIT = 20.0


@dataclass
class Disk:
    """What the disk phase saw."""

    flood_bytes: int = 0
    endings: dict[str, str] = field(default_factory=dict)
    refusals: int = 0
    truncations_logged: int = 0
    journal_errors_logged: int = 0
    answered_when_full: bool = False
    started_after: bool = False
    same_after_restart: int = 0
    jobs: int = 0
    left: Leftovers | None = None
    lost: list[str] = field(default_factory=list)


def free(path: str) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(path: str, size: int | None) -> None:
    """Write `size` bytes to `path` (None: until the disk is full)."""
    with open(path, "wb") as filler:
        written, block = 0, b"\0" * MiB
        while size is None or written < size:
            try:
                filler.write(block[: MiB if size is None else min(MiB, size - written)])
                filler.flush()
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                return
            written += MiB


def ended(stub: Any, job_id: str) -> pb.JobStatus:
    deadline = time.monotonic() + END_WAIT
    while True:
        job: pb.JobStatus = stub.Status(
            pb.StatusRequest(job_id=job_id), timeout=CALL_TIMEOUT
        ).job
        if job.state not in (pb.JOB_STATE_RUNNING, pb.JOB_STATE_STOPPING):
            return job
        if time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def snapshot(stub: Any, ids: list[str]) -> dict[str, tuple[pb.JobStatus, str]]:
    """Each job's status and output hash; the output must match its size."""
    found = {}
    for job_id in ids:
        output = collect(
            stub.StreamOutput(
                pb.StreamOutputRequest(job_id=job_id), timeout=CALL_TIMEOUT
            )
        )
        job = stub.Status(pb.StatusRequest(job_id=job_id), timeout=CALL_TIMEOUT).job
        data = output.stdout + b"\0" + output.stderr
        found[job_id] = (job, hashlib.sha256(data).hexdigest())
    return found


def refused_for_disk(clients: Clients, result: Disk) -> None:
    """Start by either user: RESOURCE_EXHAUSTED naming min-free-disk."""
    for user in ("flooder", "calm"):
        try:
            start(clients.stub(user), "echo no room")
            result.lost.append(f"{user}'s Start below the disk floor ran")
        except grpc.RpcError as error:
            result.refusals += 1
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            if problem := refusal(error, code, "min-free-disk"):
                result.lost.append(f"Start below the floor: {problem}")


def when_full(clients: Clients, sleeper: str, flood: str, result: Disk) -> None:
    """With not one byte free: stop a job (its journal write fails), read."""
    stub = clients.stub("flooder")
    stop = pb.StopRequest(job_id=sleeper, grace_seconds=1)
    job = stub.Stop(stop, timeout=CALL_TIMEOUT).job
    if job.state != pb.JOB_STATE_KILLED or not job.stop_requested:
        result.lost.append(f"job stopped on a full disk ended {job.state}")
    list_all(clients.stub("calm"), CALL_TIMEOUT)
    request = pb.StreamOutputRequest(job_id=flood)
    output = collect(stub.StreamOutput(request, timeout=CALL_TIMEOUT))
    status = stub.Status(pb.StatusRequest(job_id=flood), timeout=CALL_TIMEOUT).job
    result.answered_when_full = len(output.stdout) == status.output_bytes
    if not result.answered_when_full:
        result.lost.append("the flood's log, read on a full disk, is not its size")


def phase(server: ServerProcess, disk: str, result: Disk) -> None:
    clients = server.start()
    try:
        stub = clients.stub("flooder")
        ticker, sleeper = start(stub, TICKER), start(stub, SLEEPER)
        for job_id in (ticker, sleeper):
            first_chunk(stub, job_id)
        filler = os.path.join(disk, "filler")
        fill(filler, free(disk) - FLOOR - ROOM)
        flood = start(stub, FLOOD)
        for name, job_id in (("flood", flood), ("ticker", ticker)):
            job = ended(stub, job_id)
            how = (job.state, job.signal, job.output_truncated)
            result.endings[name] = f"{pb.JobState.Name(job.state)} {job.signal}"
            if how != (pb.JOB_STATE_KILLED, SIGPIPE, True):
                result.lost.append(f"{name} job on the floor ended {how}")
        result.flood_bytes = ended(stub, flood).output_bytes
        refused_for_disk(clients, result)
        fill(filler + "-2", None)
        when_full(clients, sleeper, flood, result)
        os.unlink(filler + "-2")
        os.unlink(filler)
        back = start(clients.stub("calm"), "echo back")
        job = ended(clients.stub("calm"), back)
        result.started_after = (job.state, job.exit_code) == (pb.JOB_STATE_EXITED, 0)
        if not result.started_after:
            result.lost.append("no job ran once space was back")
        ids = [ticker, sleeper, flood]
        before = snapshot(stub, ids)
    finally:
        clients.close()
    code, _ = server.terminate(server.grace + 30)
    if code is None:
        server.kill()
        result.lost.append("the disk server did not exit on SIGTERM")
    log = server.log_text()
    result.truncations_logged = log.count("output truncated (min-free-disk)")
    result.journal_errors_logged = log.count("cannot write its journal record")
    clients = server.start()
    try:
        after = snapshot(clients.stub("flooder"), ids)
    finally:
        clients.close()
    result.jobs = len(ids)
    for job_id in ids:
        if after[job_id] == before[job_id]:
            result.same_after_restart += 1
        else:
            old, new = before[job_id][0], after[job_id][0]
            result.lost.append(
                f"job {job_id} after the restart: {pb.JobState.Name(new.state)},"
                f" {new.output_bytes} bytes (before: {pb.JobState.Name(old.state)},"
                f" {old.output_bytes} bytes)"
            )


def run(work: str, pki_dir: str, grace: float) -> Disk:
    """The disk phase on a tmpfs of `SIZE` (unmounted at the end)."""
    disk = os.path.join(work, "disk")
    os.makedirs(disk)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE >> 20}M,mode=0755", "tmpfs", disk],
        check=True,
    )
    result = Disk()
    state_dir = os.path.join(disk, "state")
    server = ServerProcess(
        work, pki_dir, state_dir, grace, options=OPTIONS, name="disk"
    )
    server.output_cap = 1 << 30  # the disk's floor is the cap that counts
    try:
        phase(server, disk, result)
    finally:
        result.left = stopped(server)
        subprocess.run(["umount", disk], check=False)
    if not result.left.none:
        result.lost.append(f"left behind: {result.left.describe()}")
    return result
