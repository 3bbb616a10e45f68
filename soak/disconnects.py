"""Phase 2: followers that vanish, and the server's threads after.

After the warm-up (`soak.warmup`) any thread above the baseline is a leak.
`run` drops followers at random moments by cancelling the call, by
resetting its TCP connection, or by SIGKILLing the process that follows,
then checks the threads are back to the baseline, that every follower slot
is free again (64 new followers are all served) and that the jobs followed
kept running and writing without a gap.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc

from jobworker.v1 import jobworker_pb2 as pb
from soak.client import Clients
from soak.proxy import ResettingProxy
from soak.server import ServerProcess

FOLLOWERS = 64
RESET_NOTICE = 5.0
SLOT_WAIT = 10.0
TICKER = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.02; done"
STUBBORN = "trap '' TERM; echo up; while :; do sleep 1; done"


def shell(script: str) -> list[bytes]:
    return [b"/bin/sh", b"-c", script.encode()]


def start(stub: Any, script: str) -> str:
    job_id: str = stub.Start(pb.StartRequest(command=shell(script)), timeout=60).job.id
    return job_id


def hold_followers(clients: Clients, job_id: str, count: int) -> list[Any]:
    """`count` followers of `job_id`, each served (its first chunk received).

    If one is refused, those already open are cancelled before raising.
    """
    calls: list[Any] = []
    try:
        for _ in range(count):
            calls.append(
                clients.stub("alice").StreamOutput(
                    pb.StreamOutputRequest(job_id=job_id), timeout=120
                )
            )
            next(calls[-1])
    except BaseException:
        for call in calls:
            call.cancel()
        raise
    return calls


@dataclass
class Drops:
    """What phase 2 did and saw."""

    tried: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    slowest: dict[str, float] = field(default_factory=dict)
    threads_before: int = 0
    threads_peak: int = 0
    threads_after: int = 0
    settle_seconds: float = 0.0
    seconds: float = 0.0


def drop_by_cancel(clients: Clients, job_id: str, chunks: int) -> None:
    call = clients.stub("bob").StreamOutput(
        pb.StreamOutputRequest(job_id=job_id), timeout=120
    )
    for _ in range(chunks):
        next(call)
    call.cancel()


def drop_by_reset(clients: Clients, job_id: str, chunks: int, port: int) -> None:
    proxy = ResettingProxy(port)
    stub = clients.stub("bob", f"127.0.0.1:{proxy.port}")
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id), timeout=120)
    for _ in range(max(chunks, 1)):
        next(call)
    proxy.reset()
    # The server's side is what is under test; do not wait long for ours.
    timer = threading.Timer(RESET_NOTICE, call.cancel)
    timer.start()
    try:
        for _ in call:
            pass
    except grpc.RpcError:
        pass
    timer.cancel()


def drop_by_kill(clients: Clients, job_id: str, chunks: int) -> None:
    argv = [sys.executable, "-m", "soak.follower"]
    argv += [clients.target, clients.pki_dir, "bob", job_id]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert child.stdout is not None
    lines = 0
    while lines <= chunks and child.stdout.readline():
        lines += 1
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    if lines <= chunks:
        raise RuntimeError(f"the follower process ended after {lines} lines")


def run(clients: Clients, server: ServerProcess, count: int, seed: int) -> Drops:
    rng = random.Random(seed)  # noqa: S311 - seeded, so a run can be replayed
    drops = Drops(threads_before=server.vitals().threads)
    stub = clients.stub("bob")
    jobs = [start(stub, TICKER) for _ in range(4)]
    begin = time.monotonic()
    tasks: list[tuple[str, Callable[[], None]]] = []
    for _ in range(count):
        mode = rng.choice(("cancel", "reset", "kill"))
        job_id, chunks = rng.choice(jobs), rng.randrange(0, 30)
        if mode == "cancel":
            task = partial(drop_by_cancel, clients, job_id, chunks)
        elif mode == "reset":
            task = partial(drop_by_reset, clients, job_id, chunks, server.port)
        else:
            task = partial(drop_by_kill, clients, job_id, chunks)
        tasks.append((mode, task))

    lock = threading.Lock()

    def attempt(task: tuple[str, Callable[[], None]]) -> None:
        mode, function = task
        problem, began = None, time.monotonic()
        try:
            function()
        except Exception as error:  # every failure is reported
            problem = f"{mode} follower failed: {error!r}"
        threads = server.vitals().threads
        with lock:
            drops.tried[mode] += 1
            took = time.monotonic() - began
            drops.slowest[mode] = max(drops.slowest.get(mode, 0.0), took)
            drops.threads_peak = max(drops.threads_peak, threads)
            if problem is not None:
                drops.lost.append(problem)

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(attempt, tasks))
    settle = time.monotonic()
    while server.vitals().threads > drops.threads_before:
        if time.monotonic() - settle > 30:
            break
        time.sleep(0.1)
    drops.settle_seconds = time.monotonic() - settle
    drops.threads_after = server.vitals().threads
    if drops.threads_after > drops.threads_before:
        drops.lost.append(
            f"threads {drops.threads_after} > baseline {drops.threads_before}"
        )
    problem = all_slots_free(clients, jobs[0])
    if problem is not None:
        drops.lost.append(problem)
    drops.lost += [
        problem for job_id in jobs if (problem := check_ticker(stub, job_id))
    ]
    drops.seconds = time.monotonic() - begin
    return drops


def all_slots_free(clients: Clients, job_id: str) -> str | None:
    """Whether the server's 64 follower slots are all free again (within 10 s).

    The server learns of a drop asynchronously, so a slot may take a moment.
    """
    deadline = time.monotonic() + SLOT_WAIT
    while True:
        held: list[Any] = []
        try:
            held = hold_followers(clients, job_id, FOLLOWERS)
        except grpc.RpcError as error:
            if time.monotonic() > deadline:
                return f"a follower slot was not freed: {error.code()}"
        finally:
            for call in held:
                call.cancel()
        if held:
            return None
        time.sleep(0.5)


def check_ticker(stub: Any, job_id: str) -> str | None:
    """The job still runs, its output has no gap; then stop it."""
    status = stub.Status(pb.StatusRequest(job_id=job_id), timeout=60).job
    if status.state != pb.JOB_STATE_RUNNING:
        return f"followed job {job_id} is {status.state}, not running"
    stub.Stop(pb.StopRequest(job_id=job_id, grace_seconds=2), timeout=60)
    text = b"".join(
        chunk.data
        for chunk in stub.StreamOutput(
            pb.StreamOutputRequest(job_id=job_id), timeout=60
        )
    )
    ticks = [int(line.split()[1]) for line in text.splitlines()]
    if ticks != list(range(len(ticks))) or len(ticks) < 10:
        return f"job {job_id} output has a gap ({len(ticks)} ticks)"
    return None
