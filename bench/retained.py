"""Server memory per retained finished job whose argv is 1 MiB (issue 14).

On a fresh server, `jobs` jobs of `true` with the largest argv a Start
takes (`MAX_COMMAND`, 1 MiB) are started and end; the figure is the RSS
after them over the RSS before, per job. The server holds such an argv
once (record, board, journal and statuses share it: tests/test_argv_memory.py),
so the figure is about 1 MiB plus what any finished job costs.
"""

from __future__ import annotations

from typing import Any

from bench.figures import _settled_rss, _wait_all_ended, control
from bench.servers import JobWorkerProcess
from jobworker.job.manager import MAX_ARGUMENT, MAX_COMMAND
from jobworker.v1 import jobworker_pb2 as pb


def big_argv() -> list[bytes]:
    """`true` and the longest arguments that fit in MAX_COMMAND (with NULs)."""
    argv, left = [b"true"], MAX_COMMAND - len(b"true\0")
    while left > 1:
        size = min(MAX_ARGUMENT, left - 1)
        argv.append(bytes([ord("a") + len(argv) % 26]) * size)
        left -= size + 1
    return argv


def per_big_argv_job(server: JobWorkerProcess, jobs: int) -> dict[str, Any]:
    """RSS per finished job of a 1 MiB argv, kept, and the argv's size."""
    argv = big_argv()
    with control(server) as stub:
        _wait_all_ended(stub)
        idle = _settled_rss(server)
        for _ in range(jobs):
            stub.Start(pb.StartRequest(command=argv), timeout=60)
        _wait_all_ended(stub)
        kept = _settled_rss(server)
    return {
        "idle_rss": idle,
        "per_job": (kept - idle) / jobs,
        "argv_bytes": sum(len(arg) + 1 for arg in argv),
    }
