"""A benchmark client process: `python -m bench.worker '<JSON task>'`.

Modes: `stream` (followers reading a bare stream or a job's output, each on
its own connection, hashing what they get), `hold` (followers that stay
open on running jobs), `unary` (bare Echo or jobworker Status calls from
some threads for some seconds), `start` (sequential Start calls), `cli`
(the CLI's own code starts a job and copies its output to /dev/null),
`burst` (one Start per thread, all at once) and `samples` (Status calls
with the time each was sent, for `bench.flood`).
Each says `ready` once connected, waits for `go` on stdin, then reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from bench.common import BARE_ECHO, BARE_STREAM, Endpoint, grpc, open_channel, say
from bench.stats import percentile
from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc


def _go() -> None:
    say({"ready": True})
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(0)


def _in_threads(count: int, body: Callable[[int], dict[str, Any]]) -> list[Any]:
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            results[index] = body(index)
        except grpc.RpcError as error:
            results[index] = {"error": f"{error.code()}: {error.details()}"}

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _data(task: dict[str, Any], channel: grpc.Channel) -> Iterable[bytes]:
    if task["kind"] == "bare":
        call = channel.unary_stream(BARE_STREAM, None, None)
        data: Iterable[bytes] = call(str(task["bytes"]).encode())
        return data
    stub = pb_grpc.JobWorkerStub(channel)
    request = pb.StreamOutputRequest(job_id=task["job_id"])
    return (chunk.data for chunk in stub.StreamOutput(request))


def stream(task: dict[str, Any], endpoint: Endpoint) -> list[Any]:
    channels = [open_channel(endpoint) for _ in range(task["followers"])]
    _go()

    def follow(index: int) -> dict[str, Any]:
        digest = hashlib.sha256() if task.get("hash") else None
        count = 0
        began = time.monotonic()
        for data in _data(task, channels[index]):
            count += len(data)
            if digest is not None:
                digest.update(data)
        return {
            "began": began,
            "ended": time.monotonic(),
            "bytes": count,
            "sha256": digest.hexdigest() if digest is not None else None,
        }

    return _in_threads(len(channels), follow)


def hold(task: dict[str, Any], endpoint: Endpoint) -> list[Any]:
    """Follow each job in `job_ids` until told to stop; count what arrives."""
    calls: list[Any] = []
    got_first = threading.Semaphore(0)
    counts = [0] * len(task["job_ids"])

    def consume(index: int, call: Any) -> None:
        try:
            for chunk in call:
                if counts[index] == 0:
                    got_first.release()
                counts[index] += len(chunk.data)
        except grpc.RpcError:
            pass

    for index, job_id in enumerate(task["job_ids"]):
        stub = pb_grpc.JobWorkerStub(open_channel(endpoint))
        call = stub.StreamOutput(pb.StreamOutputRequest(job_id=job_id))
        calls.append(call)
        threading.Thread(target=consume, args=(index, call), daemon=True).start()
    for _ in calls:
        got_first.acquire()
    _go()
    for call in calls:
        call.cancel()
    return [{"bytes": count} for count in counts]


def unary(task: dict[str, Any], endpoint: Endpoint) -> dict[str, Any]:
    channel = open_channel(endpoint)
    if task["kind"] == "bare":
        echo = channel.unary_unary(BARE_ECHO, None, None)

        def call() -> None:
            echo(b"status?")
    else:
        stub = pb_grpc.JobWorkerStub(channel)
        request = pb.StatusRequest(job_id=task["job_id"])

        def call() -> None:
            stub.Status(request)

    for _ in range(50):  # warm up the connection and both sides' code
        call()
    _go()
    seconds: float = task["seconds"]

    def loop(_: int) -> dict[str, Any]:
        latencies: list[float] = []
        began = time.monotonic()
        stop_at = began + seconds
        while (now := time.monotonic()) < stop_at:
            call()
            latencies.append(time.monotonic() - now)
        return {"latencies": latencies, "elapsed": time.monotonic() - began}

    results = _in_threads(task["threads"], loop)
    errors = [result["error"] for result in results if "error" in result]
    if errors:
        return {"error": errors[0]}
    latencies = [x for result in results for x in result["latencies"]]
    elapsed = max(result["elapsed"] for result in results)
    return {
        "calls": len(latencies),
        "per_second": len(latencies) / elapsed,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
    }


def start(task: dict[str, Any], endpoint: Endpoint) -> dict[str, Any]:
    stub = pb_grpc.JobWorkerStub(open_channel(endpoint))
    stub.List(pb.ListRequest())
    _go()
    request = pb.StartRequest(command=[arg.encode() for arg in task["command"]])

    def starts(_: int) -> dict[str, Any]:
        latencies, ids = [], []
        for _ in range(task["count"]):
            began = time.monotonic()
            job = stub.Start(request).job
            latencies.append(time.monotonic() - began)
            ids.append(job.id)
        return {"latencies": latencies, "ids": ids}

    results = _in_threads(task.get("threads", 1), starts)
    errors = [result["error"] for result in results if "error" in result]
    if errors:
        return {"error": errors[0]}
    return {
        "latencies": [x for result in results for x in result["latencies"]],
        "ids": [x for result in results for x in result["ids"]],
    }


def burst(task: dict[str, Any], endpoint: Endpoint) -> list[Any]:
    """One Start per thread, all at once; each thread's times and outcome."""
    stub = pb_grpc.JobWorkerStub(open_channel(endpoint))
    stub.List(pb.ListRequest())
    request = pb.StartRequest(command=[arg.encode() for arg in task["command"]])
    _go()

    def one_start(_: int) -> dict[str, Any]:
        began = time.monotonic()
        try:
            stub.Start(request, timeout=task["timeout"])
            outcome = "OK"
        except grpc.RpcError as error:
            outcome = f"{error.code().name}: {error.details()}"
        return {"began": began, "ended": time.monotonic(), "outcome": outcome}

    return _in_threads(task["threads"], one_start)


def samples(task: dict[str, Any], endpoint: Endpoint) -> dict[str, Any]:
    """Status of one job, call after call, for some seconds: (sent, latency)."""
    stub = pb_grpc.JobWorkerStub(open_channel(endpoint))
    request = pb.StatusRequest(job_id=task["job_id"])
    for _ in range(50):  # warm up, as `unary` does
        stub.Status(request)
    _go()
    found, failures = [], 0
    stop_at = time.monotonic() + task["seconds"]
    while (now := time.monotonic()) < stop_at:
        try:
            stub.Status(request, timeout=30)
        except grpc.RpcError:
            failures += 1
        found.append((now, time.monotonic() - now))
    return {"samples": found, "failures": failures}


def cli(task: dict[str, Any], endpoint: Endpoint) -> dict[str, Any]:
    """`jobworker run -- head -c N /dev/zero > /dev/null`, in the CLI's code."""
    from jobworker.cli import main as jobworker_cli  # noqa: PLC0415
    from jobworker.cli.client import Client, ClientConfig  # noqa: PLC0415

    config = ClientConfig(endpoint.address, endpoint.ca, endpoint.cert, endpoint.key)
    client = Client(config)
    client.list()
    _go()
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the whole process
    began = time.monotonic()
    command = [b"head", b"-c", str(task["bytes"]).encode(), b"/dev/zero"]
    job = client.start(command, pb.Limits())
    copied = jobworker_cli.copy_output(client, job.id)
    ended = time.monotonic()
    final = client.status(job.id)
    client.close()
    return {
        "job_id": job.id,
        "began": began,
        "ended": ended,
        "bytes": copied,
        "output_bytes": final.output_bytes,
        "truncated": final.output_truncated,
        "exit_code": final.exit_code,
    }


MODES: dict[str, Callable[[dict[str, Any], Endpoint], Any]] = {
    "stream": stream,
    "hold": hold,
    "unary": unary,
    "start": start,
    "cli": cli,
    "burst": burst,
    "samples": samples,
}


def main() -> None:
    task = json.loads(sys.argv[1])
    endpoint = Endpoint.from_json(task["endpoint"])
    say({"result": MODES[task["mode"]](task, endpoint)})


if __name__ == "__main__":
    main()
