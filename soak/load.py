"""Phase 1: thousands of jobs of every kind from concurrent clients, each checked.

Every job is planned with what must come of it (exit code, signal, OOM,
stop, refused start, output) and checked after its end against the final
Status and the output a follower received from offset 0. Binary jobs write
random bytes and print their SHA-256 on stderr, so the received stdout is
compared with what the job itself wrote.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from jobworker.cli.client import list_all
from jobworker.v1 import jobworker_pb2 as pb
from soak.client import Clients, Output, collect

CALL_TIMEOUT = 120.0
MiB = 1 << 20
# kind -> share of the jobs
MIX = {
    "exit": 44,
    "binary": 20,
    "refused": 10,
    "stopped": 15,
    "oom": 5,
    "flood": 3,
    "escape": 3,
}
# The server runs with this output cap; flood jobs write four times as much.
OUTPUT_CAP = 2 * MiB
SIGPIPE = 13


@dataclass(frozen=True)
class Plan:
    """One job: what to send and what must come of it."""

    index: int
    kind: str
    command: tuple[bytes, ...]
    limits: pb.Limits | None = None
    exit_code: int = 0
    size: int = 0


@dataclass
class Tally:
    """Counts of the phase, and what went wrong (which must be nothing)."""

    tried: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    output_bytes: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, plan: Plan, problem: str | None, output_bytes: int = 0) -> None:
        with self.lock:
            self.tried[plan.kind] += 1
            self.output_bytes += output_bytes
            if problem is None:
                self.ok[plan.kind] += 1
            else:
                self.lost.append(f"job {plan.index} ({plan.kind}): {problem}")


def sh(script: str) -> tuple[bytes, ...]:
    return (b"/bin/sh", b"-c", script.encode())


# Jobs whose command is always the same.
FIXED = {
    "flood": sh(f"head -c {4 * OUTPUT_CAP} /dev/zero; echo done >&2"),
    # Children in a new session and orphaned: they must not outlive it.
    "escape": sh("setsid sleep 1000 & (sleep 1000 &); echo bye"),
    "oom": (b"python3", b"-c", b"b = bytearray(512 << 20); print('survived')"),
}
STOPPABLE = (
    "trap 'echo bye; exit 0' TERM; echo started; while :; do sleep 1; done",
    "echo started; exec sleep 1000",
)
MISSING = (b"/nonexistent/soak", b"no-such-program", b"/etc/passwd")


def make_plan(index: int, rng: random.Random) -> Plan:
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    if kind == "exit":
        code = rng.randrange(0, 8)
        script = f"echo out {index}; echo err {index} >&2; exit {code}"
        return Plan(index, kind, sh(script), exit_code=code)
    if kind == "binary":
        size = rng.randrange(1, 1 << 20)
        script = f"head -c {size} /dev/urandom > b && cat b && sha256sum b >&2"
        return Plan(index, kind, sh(script), size=size)
    if kind == "refused":
        return Plan(index, kind, (rng.choice(MISSING), b"arg"))
    if kind == "stopped":
        return Plan(index, kind, sh(rng.choice(STOPPABLE)))
    limits = pb.Limits(memory_bytes=32 * MiB) if kind == "oom" else None
    return Plan(index, kind, FIXED[kind], limits=limits)


def _exit(plan: Plan, job: pb.JobStatus, output: Output) -> str | None:
    expected = (f"out {plan.index}\n".encode(), f"err {plan.index}\n".encode())
    if (job.state, job.exit_code) != (pb.JOB_STATE_EXITED, plan.exit_code):
        return f"ended {job.state}/{job.exit_code}, not exit {plan.exit_code}"
    if (output.stdout, output.stderr) != expected:
        return f"output {output.stdout!r} {output.stderr!r}"
    return None


def _binary(plan: Plan, job: pb.JobStatus, output: Output) -> str | None:
    digest = hashlib.sha256(output.stdout).hexdigest().encode()
    if (job.state, job.exit_code) != (pb.JOB_STATE_EXITED, 0):
        return f"ended {job.state}/{job.exit_code}"
    if len(output.stdout) != plan.size or not output.stderr.startswith(digest):
        return f"{len(output.stdout)} of {plan.size} bytes or hash differs"
    return None


def _stopped(plan: Plan, job: pb.JobStatus, output: Output) -> str | None:
    graceful = (pb.JOB_STATE_EXITED, 0, b"started\nbye\n")
    killed = (pb.JOB_STATE_KILLED, 15, b"started\n")
    code = job.exit_code if job.HasField("exit_code") else job.signal
    ending = (job.state, code, output.stdout)
    if ending not in (graceful, killed) or not job.stop_requested:
        return f"stopped job ended {ending}, stop_requested={job.stop_requested}"
    return None


def _oom(plan: Plan, job: pb.JobStatus, output: Output) -> str | None:
    ending = (job.state, job.signal, job.oom_killed, job.stop_requested)
    if ending != (pb.JOB_STATE_KILLED, 9, True, False):
        return f"OOM job ended {ending}"
    if b"survived" in output.stdout:
        return "OOM job survived"
    return None


def _flood(plan: Plan, job: pb.JobStatus, output: Output) -> str | None:
    # Past its cap the server closes the job's pipes: `head` dies of EPIPE,
    # then the shell writing `done` to stderr dies of SIGPIPE (doc/output.md,
    # "Past a cap").
    ending = (job.state, job.signal, job.output_truncated, job.output_bytes)
    if ending != (pb.JOB_STATE_KILLED, SIGPIPE, True, OUTPUT_CAP):
        return f"flood job ended {ending}"
    if output.stdout.count(0) != OUTPUT_CAP or output.stderr:
        return "flood job's kept output is not the first bytes it wrote"
    return None


def _escape(plan: Plan, job: pb.JobStatus, output: Output) -> str | None:
    ending = (job.state, job.exit_code, output.stdout, output.stderr)
    if ending != (pb.JOB_STATE_EXITED, 0, b"bye\n", b""):
        return f"escaping job ended {ending}"
    return None


CHECKS = {
    "escape": _escape,
    "exit": _exit,
    "binary": _binary,
    "stopped": _stopped,
    "oom": _oom,
    "flood": _flood,
}


def check(plan: Plan, job: pb.JobStatus, output: Output) -> str | None:
    """Why the job's end is wrong, or None."""
    received = len(output.stdout) + len(output.stderr)
    if job.output_bytes != received:
        return f"Status says {job.output_bytes} output bytes, {received} received"
    return CHECKS[plan.kind](plan, job, output)


def run_job(stub: Any, plan: Plan, tally: Tally) -> str | None:
    """Run and check one job; its id if it started."""
    request = pb.StartRequest(command=list(plan.command))
    if plan.limits is not None:
        request.limits.CopyFrom(plan.limits)
    try:
        job = stub.Start(request, timeout=CALL_TIMEOUT).job
    except grpc.RpcError as error:
        refused = error.code() == grpc.StatusCode.FAILED_PRECONDITION
        problem = None if plan.kind == "refused" and refused else f"Start {error}"
        tally.record(plan, problem)
        return None
    if plan.kind == "refused":
        tally.record(plan, f"started {plan.command!r}")
        return str(job.id)
    try:
        follow = stub.StreamOutput(
            pb.StreamOutputRequest(job_id=job.id), timeout=CALL_TIMEOUT
        )
        if plan.kind == "stopped":
            first = next(follow)
            stop = pb.StopRequest(job_id=job.id, grace_seconds=5)
            stub.Stop(stop, timeout=CALL_TIMEOUT)
            output = collect(follow)
            output.stdout = first.data + output.stdout
        else:
            output = collect(follow)
        final = stub.Status(pb.StatusRequest(job_id=job.id), timeout=CALL_TIMEOUT).job
    except (grpc.RpcError, StopIteration) as error:
        tally.record(plan, f"call failed: {error}")
        return str(job.id)
    tally.record(plan, check(plan, final, output), len(output.stdout + output.stderr))
    return str(job.id)


def run(clients: Clients, users: list[str], jobs: int, seed: int) -> Tally:
    """`jobs` jobs, spread over one client thread per user."""
    rng = random.Random(seed)  # noqa: S311 - seeded, so a run can be replayed
    plans = [make_plan(index, rng) for index in range(jobs)]
    tally = Tally()

    def client(number: int) -> int:
        stub = clients.stub(users[number])
        mine = plans[number :: len(users)]
        started = {run_job(stub, plan, tally) for plan in mine} - {None}
        listed = list_all(stub, CALL_TIMEOUT)
        missing = started - {job.id for job in listed}
        if missing or any(job.owner != users[number] for job in listed):
            with tally.lock:
                tally.lost.append(
                    f"{users[number]}: {len(missing)} of its jobs not listed,"
                    " or another's listed"
                )
        return len(mine)

    begin = time.monotonic()
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(client, range(len(users))))
    tally.seconds = time.monotonic() - begin
    return tally
