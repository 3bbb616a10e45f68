"""Phase 5: one user floods a server of its own caps while another's calls go on.

On a server with small per-user caps (`OPTIONS`), `flooder` (its own
certificate) starts three times its job cap at once, opens followers past
its share, sends bad ids (huge, non-printable, unknown) and floods output
past the per-job cap and its output quota. Each refusal must carry the
right gRPC code and a message naming the cap. All along, `calm` starts,
follows, polls and lists its own jobs: none of its calls may fail, and its
Status latency during the flood is measured against before.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from jobworker.cli.client import list_all
from jobworker.v1 import jobworker_pb2 as pb
from soak.client import Clients, collect
from soak.disconnects import shell, start
from soak.load import FIXED, OUTPUT_CAP, SIGPIPE
from soak.server import ServerProcess
from soak.system import Leftovers, leftovers, remove_cgroups

JOB_CAP = 8
FOLLOWERS = 16  # the server's; a user's share is half by default
SHARE = FOLLOWERS // 2
QUOTA = 6 * OUTPUT_CAP
OPTIONS = (
    f"--max-jobs-per-user={JOB_CAP}",
    f"--max-followers={FOLLOWERS}",
    f"--user-output-quota={QUOTA >> 20}M",
)
BAD_IDS = {
    "huge": "f" * (1 << 20),
    "non-printable": "\x1b[2J\x00\x07\x9b",
    "unknown": "",  # a fresh uuid4 each call
}
BAD_CALLS = 30  # per kind of id and method
BEFORE_SECONDS = 3.0
SLEEPER = "echo up; exec sleep 1000"
CALL_TIMEOUT = 60.0
# A bad id's refusal must not echo it: the message stays short.
MESSAGE_BOUND = 300
NOTHING = Leftovers((), (), (), ())


@dataclass
class Calm:
    """The other user's calls: counts, failures and Status latencies."""

    calls: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    before: list[float] = field(default_factory=list)
    during: list[float] = field(default_factory=list)


@dataclass
class Flood:
    """What the flood phase saw."""

    refusals: Counter[str] = field(default_factory=Counter)
    started: Counter[str] = field(default_factory=Counter)
    floods: Counter[str] = field(default_factory=Counter)
    flood_bytes: int = 0
    log_growth: int = 0
    bad_calls: int = 0
    calm: Calm = field(default_factory=Calm)
    seconds: float = 0.0
    left: Leftovers = NOTHING
    lost: list[str] = field(default_factory=list)


def refusal(error: grpc.RpcError, code: grpc.StatusCode, cap: str) -> str | None:
    """Why `error` is not a refusal with `code` naming `cap`, or None."""
    details = error.details() or ""
    if error.code() != code or cap not in details:
        return f"{error.code().name} {details[:200]!r}, not {code.name} naming {cap}"
    return None


def calm_user(clients: Clients, stop: threading.Event, calm: Calm) -> None:
    """Start, follow, poll and list `calm`'s own jobs until `stop`."""
    stub = clients.stub("calm")
    number = 0
    while not stop.is_set():
        number += 1
        try:
            job_id = start(stub, f"echo calm {number}")
            calm.calls["Start"] += 1
            request = pb.StreamOutputRequest(job_id=job_id)
            output = collect(stub.StreamOutput(request, timeout=CALL_TIMEOUT))
            calm.calls["StreamOutput"] += 1
            status = stub.Status(pb.StatusRequest(job_id=job_id), timeout=60).job
            calm.calls["Status"] += 1
            listed = list_all(stub, CALL_TIMEOUT)
            calm.calls["List"] += 1
        except grpc.RpcError as error:
            calm.failures.append(f"{error.code().name}: {error.details()}")
            continue
        if output.stdout != f"calm {number}\n".encode() or status.exit_code != 0:
            calm.failures.append(f"calm job {number}: {output.stdout!r}, {status}")
        if any(job.owner != "calm" for job in listed):
            calm.failures.append("calm's List shows another user's job")


def status_latencies(
    clients: Clients, job_id: str, until: Callable[[], bool], into: list[float]
) -> None:
    """Status of `calm`'s own job, one call after the other, until `until()`."""
    stub = clients.stub("calm")
    request = pb.StatusRequest(job_id=job_id)
    while not until():
        began = time.monotonic()
        stub.Status(request, timeout=CALL_TIMEOUT)
        into.append(time.monotonic() - began)


def job_cap(stub: Any, result: Flood) -> list[str]:
    """Three times the job cap at once: exactly the cap start."""
    request = pb.StartRequest(command=shell(SLEEPER))
    calls = [
        stub.Start.future(request, timeout=CALL_TIMEOUT) for _ in range(3 * JOB_CAP)
    ]
    ids = []
    for call in calls:
        error = call.exception()
        if error is None:
            ids.append(call.result().job.id)
            continue
        problem = refusal(
            error, grpc.StatusCode.RESOURCE_EXHAUSTED, "max-jobs-per-user"
        )
        result.refusals["Start past max-jobs-per-user"] += 1
        if problem:
            result.lost.append(f"Start past the job cap: {problem}")
    result.started["sleepers"] = len(ids)
    if len(ids) != JOB_CAP:
        result.lost.append(f"{len(ids)} of {3 * JOB_CAP} Starts ran, not {JOB_CAP}")
    return ids


def follower_share(clients: Clients, job_id: str, result: Flood) -> list[Any]:
    """Followers of one job until refused, and some more: exactly the share."""
    held: list[Any] = []
    request = pb.StreamOutputRequest(job_id=job_id)
    for _ in range(SHARE + 4):
        call = clients.stub("flooder").StreamOutput(request, timeout=CALL_TIMEOUT)
        try:
            next(call)
        except grpc.RpcError as error:
            result.refusals["StreamOutput past max-followers-per-user"] += 1
            cap = "max-followers-per-user"
            if problem := refusal(error, grpc.StatusCode.RESOURCE_EXHAUSTED, cap):
                result.lost.append(f"a follower past the share: {problem}")
            continue
        held.append(call)
    result.started["followers"] = len(held)
    if len(held) != SHARE:
        result.lost.append(f"{len(held)} followers served, not the share {SHARE}")
    return held


def bad_ids(stub: Any, result: Flood) -> None:
    """Status, Stop and StreamOutput with bad ids, from 8 threads."""
    expected = {
        "huge": grpc.StatusCode.INVALID_ARGUMENT,
        "non-printable": grpc.StatusCode.NOT_FOUND,
        "unknown": grpc.StatusCode.NOT_FOUND,
    }

    def call(task: tuple[str, str]) -> str | None:
        kind, method = task
        job_id = BAD_IDS[kind] or str(uuid.uuid4())
        try:
            if method == "StreamOutput":
                request = pb.StreamOutputRequest(job_id=job_id)
                list(stub.StreamOutput(request, timeout=CALL_TIMEOUT))
            elif method == "Stop":
                stub.Stop(pb.StopRequest(job_id=job_id), timeout=CALL_TIMEOUT)
            else:
                stub.Status(pb.StatusRequest(job_id=job_id), timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            details = error.details() or ""
            if error.code() != expected[kind]:
                return f"{method} of a {kind} id: {error.code().name}"
            if len(details) > MESSAGE_BOUND or not details.isprintable():
                return f"{method} of a {kind} id: message of {len(details)} chars"
            return None
        return f"{method} of a {kind} id succeeded"

    tasks = [
        (kind, method)
        for kind in BAD_IDS
        for method in ("Status", "Stop", "StreamOutput")
        for _ in range(BAD_CALLS)
    ]
    with ThreadPoolExecutor(8) as pool:
        problems = [p for p in pool.map(call, tasks) if p]
    result.bad_calls = len(tasks)
    result.lost += sorted(set(problems))


def output_flood(stub: Any, result: Flood) -> None:
    """Floods 4 at a time until a Start is refused for the output quota."""

    def flood(_: int) -> tuple[str | None, int, str]:
        """(problem, bytes kept, how it ended) of one flood job."""
        try:
            job = stub.Start(
                pb.StartRequest(command=list(FIXED["flood"])), timeout=CALL_TIMEOUT
            ).job
        except grpc.RpcError as error:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            return refusal(error, code, "user-output-quota"), 0, "refused"
        request = pb.StreamOutputRequest(job_id=job.id)
        output = collect(stub.StreamOutput(request, timeout=CALL_TIMEOUT))
        final = stub.Status(pb.StatusRequest(job_id=job.id), timeout=CALL_TIMEOUT).job
        ending = (final.state, final.signal, final.output_truncated)
        received = len(output.stdout) + len(output.stderr)
        problem = None
        if ending != (pb.JOB_STATE_KILLED, SIGPIPE, True) or received != (
            final.output_bytes
        ):
            problem = f"a flood ended {ending} with {received} bytes followed"
        how = f"{pb.JobState.Name(final.state)} by {final.signal}"
        return problem, final.output_bytes, how

    for _ in range(10):
        with ThreadPoolExecutor(4) as pool:
            ends = list(pool.map(flood, range(4)))
        for problem, kept, how in ends:
            result.flood_bytes += kept
            if how == "refused":
                result.refusals["Start past user-output-quota"] += 1
            else:
                result.floods[how] += 1
            if problem:
                result.lost.append(problem)
        if result.refusals["Start past user-output-quota"]:
            break
    else:
        result.lost.append("no Start was refused for the output quota")
    if result.flood_bytes > QUOTA:
        result.lost.append(f"floods kept {result.flood_bytes} bytes, quota {QUOTA}")


def stopped(server: ServerProcess) -> Leftovers:
    """SIGTERM (SIGKILL if it hangs) a phase's own server; what it left."""
    code, _ = server.terminate(server.grace + 30)
    if code is None:
        server.kill()
    left = leftovers(server.state_dir)
    remove_cgroups(server.state_dir)
    return left


def run(work: str, pki_dir: str, grace: float) -> Flood:
    """The flood phase, on a server of its own (stopped at the end)."""
    state_dir = os.path.join(work, "state-flood")
    server = ServerProcess(
        work, pki_dir, state_dir, grace, options=OPTIONS, name="flood"
    )
    result = Flood()
    clients = server.start()
    stop = threading.Event()
    try:
        own = start(clients.stub("calm"), "echo mine")
        deadline = time.monotonic() + BEFORE_SECONDS
        before = result.calm.before
        status_latencies(clients, own, lambda: time.monotonic() > deadline, before)
        calm = threading.Thread(target=calm_user, args=(clients, stop, result.calm))
        poll = threading.Thread(
            target=status_latencies,
            args=(clients, own, stop.is_set, result.calm.during),
        )
        calm.start()
        poll.start()
        began = time.monotonic()
        log_size = os.path.getsize(server.log_path)
        try:
            flooder = clients.stub("flooder")
            sleepers = job_cap(flooder, result)
            bad_ids(flooder, result)  # before its followers take its share
            held = follower_share(clients, sleepers[0], result)
            for call in held:
                call.cancel()
            stops = [
                flooder.Stop.future(pb.StopRequest(job_id=job_id, grace_seconds=0))
                for job_id in sleepers
            ]
            for future in stops:
                future.exception()
            output_flood(flooder, result)
        finally:
            stop.set()
            calm.join(CALL_TIMEOUT)
            poll.join(CALL_TIMEOUT)
        result.seconds = time.monotonic() - began
        result.log_growth = os.path.getsize(server.log_path) - log_size
    finally:
        clients.close()
        result.left = stopped(server)
    if not result.left.none:
        result.lost.append(f"left behind: {result.left.describe()}")
    if result.calm.failures:
        result.lost += [f"calm: {f}" for f in result.calm.failures]
    return result
