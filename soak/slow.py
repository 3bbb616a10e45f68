"""Followers that stop reading: the server must not buffer a job's output for them.

A job writes far more than any transport window; several followers read
one chunk each and then nothing. gRPC flow control must hold their handler
threads back instead of the server queueing the output in memory, so its
RSS stays flat while they stall. Afterwards one follower reads all of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from jobworker.v1 import jobworker_pb2 as pb
from soak.client import Clients
from soak.disconnects import hold_followers, start
from soak.server import ServerProcess

SIZE = 256 << 20
STALLED = 8
STALL_SECONDS = 10.0
ROUNDS = 2
# Stalled followers may cost some buffers, not the job's output. The first
# round on a fresh server also pays for what threads and connections keep
# once they have carried large messages (allocator arenas, grpc buffers);
# later rounds must not grow again.
RSS_BOUND_KIB = 32 << 10
FIRST_ROUND_BOUND_KIB = 64 << 10


@dataclass
class Slow:
    """What the slow-reader phase saw."""

    size: int = SIZE
    stalled: int = STALLED
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    first_before_kib: int = 0
    first_peak_kib: int = 0
    read_back: int = 0
    read_seconds: float = 0.0
    lost: list[str] = field(default_factory=list)


def run(server: ServerProcess, clients: Clients) -> Slow:
    """`ROUNDS` rounds; the figures are the last one's, with the first's kept."""
    first = _round(server, clients)
    growth = first.rss_peak_kib - first.rss_before_kib
    if growth > FIRST_ROUND_BOUND_KIB:
        first.lost.append(f"RSS grew {growth} KiB in the first round")
    result = first
    for _ in range(ROUNDS - 1):
        result = _round(server, clients)
        growth = result.rss_peak_kib - result.rss_before_kib
        if growth > RSS_BOUND_KIB:
            result.lost.append(f"RSS grew {growth} KiB with stalled followers")
        result.lost[:0] = first.lost
    result.first_before_kib = first.rss_before_kib
    result.first_peak_kib = first.rss_peak_kib
    return result


def _round(server: ServerProcess, clients: Clients) -> Slow:
    result = Slow(rss_before_kib=server.vitals().rss_kib)
    stub = clients.stub("bob")
    job_id = start(stub, f"head -c {SIZE} /dev/zero")
    calls = hold_followers(clients, job_id, STALLED)
    deadline = time.monotonic() + STALL_SECONDS
    while time.monotonic() < deadline:
        result.rss_peak_kib = max(result.rss_peak_kib, server.vitals().rss_kib)
        time.sleep(0.5)
    for call in calls:
        call.cancel()
    began = time.monotonic()
    request = pb.StreamOutputRequest(job_id=job_id)
    for chunk in stub.StreamOutput(request, timeout=300):
        result.read_back += len(chunk.data)
    result.read_seconds = time.monotonic() - began
    status = stub.Status(pb.StatusRequest(job_id=job_id), timeout=60).job
    if result.read_back != SIZE or status.output_bytes != SIZE:
        result.lost.append(
            f"read {result.read_back} of {SIZE} bytes ({status.output_bytes} kept)"
        )
    return result
