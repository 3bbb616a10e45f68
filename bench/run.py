"""Running client processes (`bench.worker`) together and collecting results."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import Endpoint

WORKER_TIMEOUT = 300.0


class WorkerFailed(Exception):
    """A client process failed or reported an error."""


def run_workers(
    endpoint: Endpoint,
    tasks: Sequence[dict[str, Any]],
    before_go: Callable[[], None] | None = None,
) -> list[Any]:
    """Start one process per task; once all are ready, run `before_go`, say go.

    Returns each process's result, in task order.
    """
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.worker",
                # A task may carry its own endpoint (another user's).
                json.dumps({"endpoint": endpoint.to_json(), **task}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for task in tasks
    ]
    try:
        for process in processes:
            _expect(process, "ready")
        if before_go is not None:
            before_go()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [_expect(process, "result") for process in processes]
        for process in processes:
            process.wait(WORKER_TIMEOUT)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for result in results:
        errors = [result] if isinstance(result, dict) else result
        for item in errors:
            if isinstance(item, dict) and "error" in item:
                raise WorkerFailed(item["error"])
    return results


def _expect(process: subprocess.Popen[str], key: str) -> Any:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(WORKER_TIMEOUT)
        raise WorkerFailed(f"a client process ended early (exit {process.returncode})")
    message = json.loads(line)
    if key not in message:
        raise WorkerFailed(f"a client process said {message!r}, not {key}")
    return message[key]


def one(endpoint: Endpoint, task: dict[str, Any]) -> Any:
    """Run one client process; its result."""
    return run_workers(endpoint, [task])[0]
