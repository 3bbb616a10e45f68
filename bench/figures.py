"""The five jobworker figures, measured against the shipped twistd server.

Each function takes a running `JobWorkerProcess` and returns plain numbers;
`bench.__main__` turns them into summaries and ratios.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import MIB, grpc, open_channel
from bench.run import one, run_workers
from bench.servers import BenchError, JobWorkerProcess
from jobworker.cli.client import list_all
from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc

FANOUT_PROCESSES = 10
END_TIMEOUT = 120.0


@contextmanager
def control(server: JobWorkerProcess) -> Iterator[pb_grpc.JobWorkerStub]:
    """A stub for the orchestrator's own calls."""
    channel = open_channel(server.endpoint)
    try:
        yield pb_grpc.JobWorkerStub(channel)
    finally:
        channel.close()


def throughput(server: JobWorkerProcess, size: int) -> dict[str, Any]:
    """A job writes `size` bytes; the CLI's code follows it to /dev/null."""
    cpu = server.cpu_seconds()
    result = one(server.endpoint, {"mode": "cli", "bytes": size})
    if result["bytes"] != size or result["truncated"] or result["exit_code"] != 0:
        raise BenchError(f"the followed job's output is wrong: {result}")
    elapsed = result["ended"] - result["began"]
    return {
        "job_id": result["job_id"],
        "rate": size / MIB / elapsed,
        "server_cpu": (server.cpu_seconds() - cpu) / elapsed,
    }


def _wait_for_go(size: int) -> list[bytes]:
    script = f"while [ ! -e go ]; do sleep 0.01; done; exec head -c {size} /dev/zero"
    return [b"sh", b"-c", script.encode()]


def fanout(server: JobWorkerProcess, followers: int, size: int) -> dict[str, Any]:
    """`followers` clients follow one job writing `size` bytes; total MiB/s."""
    with control(server) as stub:
        job = stub.Start(pb.StartRequest(command=_wait_for_go(size))).job
    go_file = os.path.join(server.state_dir, "jobs", job.id, "work", "go")
    task = {
        "mode": "stream",
        "kind": "jobworker",
        "job_id": job.id,
        "followers": followers // FANOUT_PROCESSES,
        "hash": True,
    }
    idle = server.rss()
    server.reset_peak()
    cpu = server.cpu_seconds()

    def go() -> None:
        with open(go_file, "w"):
            pass

    results = run_workers(server.endpoint, [task] * FANOUT_PROCESSES, go)
    streams = [item for result in results for item in result]
    elapsed = max(s["ended"] for s in streams) - min(s["began"] for s in streams)
    expected = hashlib.sha256(b"\0" * size).hexdigest()
    return {
        "rate": sum(s["bytes"] for s in streams) / MIB / elapsed,
        "same_bytes": all(s["sha256"] == expected for s in streams)
        and len(streams) == followers,
        "rss_growth": server.peak_rss() - idle,
        "idle_rss": idle,
        "server_cpu": (server.cpu_seconds() - cpu) / elapsed,
    }


def start_latency(server: JobWorkerProcess, count: int) -> list[float]:
    """Seconds from Start sent to Start returned (exec'd), `count` jobs."""
    task = {"mode": "start", "count": count, "command": ["true"]}
    latencies: list[float] = one(server.endpoint, task)["latencies"]
    return latencies


def finished_job(server: JobWorkerProcess) -> str:
    """The id of a job of `true` that has ended."""
    with control(server) as stub:
        job = stub.Start(pb.StartRequest(command=[b"true"])).job
        _wait_all_ended(stub)
    return job.id


def control_plane(
    server: JobWorkerProcess, job_id: str, threads: int, seconds: float
) -> dict[str, float]:
    """Status calls from `threads` threads of one client for `seconds`."""
    task = {
        "mode": "unary",
        "kind": "jobworker",
        "job_id": job_id,
        "threads": threads,
        "seconds": seconds,
    }
    result: dict[str, float] = one(server.endpoint, task)
    return result


def _start_many(server: JobWorkerProcess, command: list[str], count: int) -> list[str]:
    threads = 4
    task = {"mode": "start", "count": count // threads, "command": command}
    results = run_workers(server.endpoint, [{**task, "threads": threads}])
    ids: list[str] = results[0]["ids"]
    return ids


def _wait_all_ended(stub: pb_grpc.JobWorkerStub) -> None:
    deadline = time.monotonic() + END_TIMEOUT
    while time.monotonic() < deadline:
        jobs = list_all(stub)
        if all(job.state in (pb.JOB_STATE_EXITED, pb.JOB_STATE_KILLED) for job in jobs):
            return
        time.sleep(0.2)
    raise BenchError("jobs did not end in time")


def _settled_rss(server: JobWorkerProcess) -> int:
    """RSS once the server has been quiet for a moment."""
    time.sleep(1.0)
    return server.rss()


def scale(server: JobWorkerProcess, jobs: int, followers: int) -> dict[str, Any]:
    """RSS per finished job, per running job and per follower; calls answered."""
    with control(server) as stub:
        _wait_all_ended(stub)
        idle = _settled_rss(server)
        _start_many(server, ["true"], jobs)
        _wait_all_ended(stub)
        finished = _settled_rss(server)
        running_ids = _start_many(server, ["sh", "-c", "echo up; exec sleep 600"], jobs)
        running = _settled_rss(server)
        per = followers // 4
        tasks = [
            {"mode": "hold", "job_ids": running_ids[i * per : (i + 1) * per]}
            for i in range(4)
        ]
        answered: dict[str, Any] = {}

        def while_followed() -> None:
            answered["rss"] = _settled_rss(server)
            answered.update(_calls_answered(stub, running_ids))
            answered["status"] = control_plane(server, running_ids[0], 8, 2.0)

        held = run_workers(server.endpoint, tasks, while_followed)
        all_followed = all(item["bytes"] > 0 for result in held for item in result)
    return {
        "idle_rss": idle,
        "per_finished": (finished - idle) / jobs,
        "per_running": (running - finished) / jobs,
        "per_follower": (answered["rss"] - running) / followers,
        "followers_ok": all_followed,
        **answered,
    }


def _calls_answered(stub: pb_grpc.JobWorkerStub, ids: list[str]) -> dict[str, Any]:
    """Status of every running job and one List: all answered, and how fast."""
    failures = 0
    began = time.monotonic()
    for job_id in ids:
        try:
            if stub.Status(pb.StatusRequest(job_id=job_id)).job.state != (
                pb.JOB_STATE_RUNNING
            ):
                failures += 1
        except grpc.RpcError:
            failures += 1
    status_seconds = (time.monotonic() - began) / len(ids)
    began = time.monotonic()
    listed = len(list_all(stub))
    return {
        "status_failures": failures,
        "status_calls": len(ids),
        "status_mean": status_seconds,
        "list_jobs": listed,
        "list_seconds": time.monotonic() - began,
    }
