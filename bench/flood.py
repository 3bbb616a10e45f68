"""Figure 6: one user's burst of Starts against another user's Status calls.

`carol` fires `STARTS` Start calls at once (`PROCESSES` client processes,
each with one connection and `STARTS // PROCESSES` threads); past her turns
they wait in her line instead of being refused (issue 14). `bob` calls
Status on his own finished job, one call after the other, from his own
client process: alone first, then while the burst runs. Both measurements
are the same worker mode, message and connection kind, so "during" and
"before" compare like with like; "during" keeps only the calls sent
between the burst's first Start and its last answer.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench.common import open_channel
from bench.report import Row, ratio_row
from bench.run import one, run_workers
from bench.servers import BenchError, JobWorkerProcess, client_endpoint
from bench.stats import Summary, percentile
from jobworker.v1 import jobworker_pb2 as pb
from jobworker.v1 import jobworker_pb2_grpc as pb_grpc

STARTS = 200
PROCESSES = 10
BEFORE_SECONDS = 3.0
# Long enough to cover the burst (a few seconds here); the calls after its
# end are not counted.
DURING_SECONDS = 12.0
START_TIMEOUT = 120.0
END_TIMEOUT = 60.0


def _own_job(server: JobWorkerProcess, pki: str) -> str:
    """A finished job of bob's, for his Status calls."""
    channel = open_channel(client_endpoint(server.endpoint.address, pki, "bob"))
    try:
        stub = pb_grpc.JobWorkerStub(channel)
        job_id: str = stub.Start(pb.StartRequest(command=[b"true"])).job.id
        deadline = time.monotonic() + END_TIMEOUT
        while stub.Status(pb.StatusRequest(job_id=job_id)).job.state in (
            pb.JOB_STATE_RUNNING,
            pb.JOB_STATE_STOPPING,
        ):
            if time.monotonic() > deadline:
                raise BenchError("bob's job did not end")
            time.sleep(0.05)
    finally:
        channel.close()
    return job_id


def flood(
    server: JobWorkerProcess, pki: str, seconds: float = DURING_SECONDS
) -> dict[str, Any]:
    """One run: bob's Status alone, then during carol's burst of Starts."""
    bob = client_endpoint(server.endpoint.address, pki, "bob")
    carol = client_endpoint(server.endpoint.address, pki, "carol")
    job_id = _own_job(server, pki)
    poll = {"mode": "samples", "job_id": job_id, "endpoint": bob.to_json()}
    before = one(bob, {**poll, "seconds": BEFORE_SECONDS})
    burst = {
        "mode": "burst",
        "command": ["true"],
        "threads": STARTS // PROCESSES,
        "timeout": START_TIMEOUT,
        "endpoint": carol.to_json(),
    }
    results = run_workers(carol, [{**poll, "seconds": seconds}, *[burst] * PROCESSES])
    during, starts = results[0], [s for result in results[1:] for s in result]
    first = min(s["began"] for s in starts)
    last = max(s["ended"] for s in starts)
    window = [lat for sent, lat in during["samples"] if first <= sent <= last]
    outcomes = Counter(s["outcome"] for s in starts)
    if not window or len(starts) != STARTS:
        raise BenchError(f"no Status call during the burst: {outcomes}")
    return {
        "started": outcomes["OK"],
        "refused": {k: n for k, n in outcomes.items() if k != "OK"},
        "burst_seconds": last - first,
        "before": [lat for _, lat in before["samples"]],
        "during": window,
        "failures": before["failures"] + during["failures"],
    }


def rows(runs: list[dict[str, Any]]) -> list[Row]:
    """The figure's rows: starts that succeeded, bob's Status during vs before."""
    started = min(run["started"] for run in runs)
    failures = sum(run["failures"] for run in runs)
    burst = Summary.of([run["burst_seconds"] for run in runs])
    found = [
        Row(
            f"6. Flood: {STARTS} concurrent Starts of one user"
            f" ({PROCESSES} processes x {STARTS // PROCESSES} threads) succeeded",
            f"{started}/{STARTS} (fewest of {len(runs)} runs; burst {burst.text(1)} s)",
            target="all",
            met=started == STARTS,
        )
    ]
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        during = Summary.of(
            [percentile(run["during"], fraction) * 1000 for run in runs]
        )
        before = Summary.of(
            [percentile(run["before"], fraction) * 1000 for run in runs]
        )
        found.append(
            ratio_row(
                f"6. Flood: another user's Status {name} during the burst"
                " (baseline: before it)",
                during,
                before,
                "ms",
                digits=2,
                lower_is_better=True,
            )
        )
    found.append(
        Row(
            "6. Flood: the other user's Status calls that failed",
            str(failures),
            target="0",
            met=failures == 0,
        )
    )
    return found
