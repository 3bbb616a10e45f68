"""The baselines, measured in the same run: bare grpcio, namespaces, a pipe."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from bench.common import GIB, MIB
from bench.run import one, run_workers
from bench.servers import BareProcess
from bench.stats import Summary


def pipe_rate(runs: int) -> Summary:
    """`head -c 1G /dev/zero | cat >/dev/null`: the physical ceiling, MiB/s."""
    rates = []
    for _ in range(runs):
        began = time.monotonic()
        subprocess.run(
            ["sh", "-c", "head -c 1G /dev/zero | cat >/dev/null"], check=True
        )
        rates.append(GIB / MIB / (time.monotonic() - began))
    return Summary.of(rates)


def disk_rate(directory: str, size: int) -> float:
    """Writing `size` bytes to a file in `directory` and flushing it, MiB/s.

    What a job's output log can sustain once the kernel's dirty page cache
    is full: the state directory's disk write rate.
    """
    path = os.path.join(directory, "disk-rate")
    os.sync()
    began = time.monotonic()
    try:
        subprocess.run(
            [
                "dd",
                "if=/dev/zero",
                f"of={path}",
                "bs=1M",
                f"count={size // MIB}",
                "conv=fdatasync",
                "status=none",
            ],
            check=True,
        )
        return size / MIB / (time.monotonic() - began)
    finally:
        os.unlink(path)


def unshare_time(runs: int) -> Summary:
    """`unshare --pid --fork --mount-proc --net --mount true`, seconds."""
    argv = ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--mount", "true"]
    times = []
    for _ in range(runs):
        began = time.monotonic()
        subprocess.run(argv, check=True)
        times.append(time.monotonic() - began)
    return Summary.of(times)


def stream_rate(
    server: BareProcess, followers: int, per_follower: int, processes: int
) -> float:
    """MiB/s in total from the bare server to `followers` clients, hashing."""
    per_process = followers // processes
    task = {
        "mode": "stream",
        "kind": "bare",
        "followers": per_process,
        "bytes": per_follower,
        "hash": followers > 1,
    }
    results = run_workers(server.endpoint, [task] * processes)
    streams = [item for result in results for item in result]
    if any(item["bytes"] != per_follower for item in streams):
        raise RuntimeError("a bare stream ended short")
    elapsed: float = max(s["ended"] for s in streams) - min(s["began"] for s in streams)
    total: int = sum(s["bytes"] for s in streams)
    return total / MIB / elapsed


def unary(server: BareProcess, threads: int, seconds: float) -> dict[str, Any]:
    """Echo calls from `threads` threads of one client for `seconds`."""
    task = {"mode": "unary", "kind": "bare", "threads": threads, "seconds": seconds}
    result: dict[str, Any] = one(server.endpoint, task)
    return result
