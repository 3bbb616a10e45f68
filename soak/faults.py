"""Phases 3 and 4: the server SIGKILLed under load, then SIGTERMed with open streams.

Crash: jobs that each have children (one of them orphaned inside the job)
are running when the server gets SIGKILL. Every process of theirs must die
with it (PDEATHSIG chains, then the PID namespace); the job cgroups stay
behind, empty, until the restarted server removes them at start-up and
serves new jobs.

Shutdown: SIGTERM with running jobs (half of them ignore SIGTERM) and one
open output stream each. Every stream must end with UNAVAILABLE "server
shutting down", the server must exit 0 within the stop grace plus a small
bound, and nothing of the run may be left.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from jobworker.v1 import jobworker_pb2 as pb
from soak.client import Clients
from soak.disconnects import TICKER, start
from soak.server import ServerProcess, alive, descendants
from soak.system import Leftovers, job_cgroups, leftovers, stray_processes

FAMILY = "sleep 1000 & setsid sleep 1000 & (sleep 1000 &); echo up; wait"
DEAF = "trap '' TERM; while :; do echo x; sleep 0.2; done"
DEATH_TIMEOUT = 10.0
STARTING = 5
# Seconds the server may take past its stop grace to exit on SIGTERM.
EXIT_BOUND = 5.0


@dataclass
class Crash:
    """What the crash phase saw."""

    jobs: int = 0
    processes: int = 0
    survivors: int = 0
    death_seconds: float = 0.0
    stale_cgroups: int = 0
    cgroups_after_restart: int = 0
    restart_logged: bool = False
    new_job_ok: bool = False
    lost: list[str] = field(default_factory=list)


def wait_dead(pids: set[int], timeout: float) -> float:
    """Seconds until every one of `pids` is dead (or `timeout`)."""
    begin = time.monotonic()
    while alive(pids) and time.monotonic() - begin < timeout:
        time.sleep(0.05)
    return time.monotonic() - begin


def first_chunk(stub: Any, job_id: str) -> None:
    call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id), timeout=60)
    next(call)
    call.cancel()


def crash(server: ServerProcess, clients: Clients, count: int) -> tuple[Crash, Clients]:
    """SIGKILL the server under `count` jobs; return the restarted server's clients."""
    result = Crash(jobs=count)
    stub = clients.stub("bob")
    jobs = [start(stub, FAMILY) for _ in range(count)]
    for job_id in jobs:
        first_chunk(stub, job_id)
    # More starts in flight when the server dies: half-made jobs must go too.
    request = pb.StartRequest(command=[b"/bin/sh", b"-c", FAMILY.encode()])
    starting = [stub.Start.future(request, timeout=60) for _ in range(STARTING)]
    time.sleep(0.2)
    pids = descendants(server.pid)
    result.processes = len(pids)
    server.kill()
    clients.close()
    for future in starting:
        future.exception()
    result.death_seconds = wait_dead(pids, DEATH_TIMEOUT)
    result.survivors = len(alive(pids)) + len(stray_processes(server.state_dir))
    result.stale_cgroups = len(job_cgroups(server.state_dir))
    clients = server.start()
    result.cgroups_after_restart = len(job_cgroups(server.state_dir))
    removed = re.search(r"removed (\d+) stale job cgroup", server.log_text())
    result.restart_logged = removed is not None and int(removed[1]) == (
        result.stale_cgroups
    )
    stub = clients.stub("bob")
    job_id = start(stub, "echo alive")
    text = b"".join(
        c.data
        for c in stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id), timeout=60)
    )
    status = stub.Status(pb.StatusRequest(job_id=job_id), timeout=60).job
    result.new_job_ok = (text, status.state, status.exit_code) == (
        b"alive\n",
        pb.JOB_STATE_EXITED,
        0,
    )
    checks = {
        f"{result.survivors} job processes survived": result.survivors == 0,
        f"{result.stale_cgroups} stale cgroups, not {count} or more": (
            result.stale_cgroups >= count
        ),
        f"{result.cgroups_after_restart} cgroups after restart": (
            result.cgroups_after_restart == 0
        ),
        "restart did not log the stale clean-up": result.restart_logged,
        "the restarted server did not run a new job": result.new_job_ok,
    }
    result.lost += [problem for problem, fine in checks.items() if not fine]
    return result, clients


@dataclass
class Shutdown:
    """What the shutdown phase saw."""

    jobs: int = 0
    streams: int = 0
    endings: Counter[str] = field(default_factory=Counter)
    exit_code: int | None = None
    seconds: float = 0.0
    survivors: int = 0
    starts: Counter[str] = field(default_factory=Counter)
    left: Leftovers | None = None
    lost: list[str] = field(default_factory=list)


def clean_exit(server: ServerProcess, status: int | None) -> bool:
    """Exit 0 after the whole shutdown (jobworker.server.tap keeps twistd from
    re-raising SIGTERM once the shutdown is complete)."""
    return status == 0 and "Server Shut Down." in server.log_text()


def shutdown(server: ServerProcess, clients: Clients, jobs: int) -> Shutdown:
    """SIGTERM the server with `jobs` running jobs, each followed."""
    result = Shutdown(jobs=jobs)
    stub = clients.stub("bob")
    ids = [start(stub, TICKER if n % 2 else DEAF) for n in range(jobs)]
    lock = threading.Lock()
    served = threading.Semaphore(0)

    def follow(job_id: str) -> None:
        call = clients.stub("bob").StreamOutput(
            pb.StreamOutputRequest(job_id=job_id), timeout=120
        )
        ending = "OK (stream ended normally)"
        try:
            next(call)
            served.release()
            for _ in call:
                pass
        except grpc.RpcError as error:
            ending = f"{error.code().name} {error.details()!r}"
        with lock:
            result.endings[ending] += 1

    threads = [threading.Thread(target=follow, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    for _ in ids:
        served.acquire(timeout=60)
    result.streams = len(threads)
    # Starts in flight at SIGTERM: refused, or started and then stopped.
    request = pb.StartRequest(command=[b"/bin/sh", b"-c", DEAF.encode()])
    starting = [stub.Start.future(request, timeout=60) for _ in range(STARTING)]
    time.sleep(0.1)
    pids = descendants(server.pid)
    result.exit_code, result.seconds = server.terminate(server.grace + 60)
    for thread in threads:
        thread.join(60)
    for future in starting:
        error = future.exception()
        code = "OK" if error is None else error.code().name
        result.starts[code] += 1
    clients.close()
    wait_dead(pids, DEATH_TIMEOUT)
    result.survivors = len(alive(pids))
    result.left = leftovers(server.state_dir)
    expected = "UNAVAILABLE 'server shutting down'"
    checks = {
        f"exit status {result.exit_code}": clean_exit(server, result.exit_code),
        f"took {result.seconds:.1f}s": result.seconds <= server.grace + EXIT_BOUND,
        f"stream endings {dict(result.endings)}": result.endings
        == Counter({expected: jobs}),
        f"{result.survivors} job processes survived": result.survivors == 0,
        f"left behind: {result.left.describe()}": result.left.none,
        f"starts in flight ended {dict(result.starts)}": set(result.starts)
        <= {"OK", "UNAVAILABLE"},
    }
    result.lost += [problem for problem, fine in checks.items() if not fine]
    return result
