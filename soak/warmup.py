"""The warm-up: make the server start every thread its pools will ever have.

grpcio's pool (a ThreadPoolExecutor) never shrinks: it grows to the most
calls it ever ran at once. So before the baseline is taken, every kind of
call is driven to its cap at the same moment: followers until one is
refused, Stop calls (which wait) from many callers until each is refused,
then a burst of quick calls into what is left. From then on a thread above
the baseline is a leak, not the pool catching up. Nothing here assumes the
server's sizes: each cap is found by being refused.
"""

from __future__ import annotations

from typing import Any

import grpc

from jobworker.v1 import jobworker_pb2 as pb
from soak.client import Clients
from soak.disconnects import STUBBORN, TICKER, start

MAX_FOLLOWERS = 10_000
STOPS_PER_CALLER = 24
BURST = 200


def followers_until_refused(clients: Clients, job_id: str) -> list[Any]:
    """Open followers of `job_id`, each served, until the server refuses one."""
    calls: list[Any] = []
    request = pb.StreamOutputRequest(job_id=job_id)
    for _ in range(MAX_FOLLOWERS):
        call = clients.stub("alice").StreamOutput(request, timeout=120)
        try:
            next(call)
        except grpc.RpcError:
            break
        calls.append(call)
    return calls


def fill_pool(clients: Clients, callers: list[str]) -> int:
    """Hold every kind of call at its cap at once; the followers served."""
    alice = clients.stub("alice")
    ticker = start(alice, TICKER)
    stops: list[Any] = []
    stubs = {caller: clients.stub(caller) for caller in callers}
    stubborn = {caller: start(stub, STUBBORN) for caller, stub in stubs.items()}
    followers = followers_until_refused(clients, ticker)
    try:
        for caller, stub in stubs.items():
            request = pb.StopRequest(job_id=stubborn[caller], grace_seconds=4)
            stops += [
                stub.Stop.future(request, timeout=60) for _ in range(STOPS_PER_CALLER)
            ]
        quick = clients.stub("alice")
        burst = [quick.List.future(pb.ListRequest(), timeout=60) for _ in range(BURST)]
        for future in burst + stops:
            future.exception()
    finally:
        for call in followers:
            call.cancel()
        # Some callers' Stops were refused (the server's budget): end them all.
        for job_id in [ticker, *stubborn.values()]:
            alice.Stop(pb.StopRequest(job_id=job_id, grace_seconds=0), timeout=60)
    return len(followers)
