"""Races through the real server: start, stop, status and follow at once.

Each round starts several jobs from threads released together, then hits
every job from several threads at once: stoppers (random graces, some while
the job is still writing, some after it exited by itself), status pollers
and followers. The invariants: a final status never changes (every Stop
answer and every later Status is the same message), states only move
forward, every follower of a job sees the same bytes, and no call runs into
its deadline. Random delays come from a seeded generator, so a failure can
be replayed.
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import random
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase, reactor, shell

ROUNDS = 10
JOBS = 6
STOPPERS = 2
POLLERS = 2
FOLLOWERS = 2
CALL_TIMEOUT = 20.0
# Long next to the test server's stop grace, short enough to wait out.
LONG_GRACE = 6.0
# A job writes interleaved output, then either exits by itself or waits.
WRITER = (
    "i=0; while [ $i -lt {lines} ]; do echo out $i; echo err $i >&2;"
    " i=$((i+1)); done; {tail}"
)
TAILS = ("exit 3", "sleep 1000", "trap '' TERM; sleep 1000")
ORDER = {
    pb.JOB_STATE_RUNNING: 0,
    pb.JOB_STATE_STOPPING: 1,
    pb.JOB_STATE_EXITED: 2,
    pb.JOB_STATE_KILLED: 2,
}
ENDED = (pb.JOB_STATE_EXITED, pb.JOB_STATE_KILLED)


@dataclass
class Seen:
    """What the threads saw of one job."""

    stops: list[pb.JobStatus] = field(default_factory=list)
    statuses: list[list[pb.JobStatus]] = field(default_factory=list)
    outputs: list[list[tuple[int, bytes]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, value: Any) -> None:
        with self.lock:
            getattr(self, kind).append(value)


def runs(call: Any) -> list[tuple[int, bytes]]:
    """A stream's data as runs of one stream (chunking depends on timing)."""
    joined: list[tuple[int, bytes]] = []
    for chunk in call:
        if joined and joined[-1][0] == chunk.stream:
            joined[-1] = (chunk.stream, joined[-1][1] + chunk.data)
        else:
            joined.append((chunk.stream, chunk.data))
    return joined


class RaceTests(APITestCase):
    max_followers = 32
    stop_grace = 0.5

    def round(self, number: int) -> tuple[dict[str, Seen], int]:
        """One round in client threads; what each job's threads saw, and calls."""
        rng = random.Random(number)
        stubs = {user: self.stub(user) for user in ("alice", "bob")}
        calls = [0]
        count = threading.Lock()

        def counted(function: Callable[..., Any], *args: Any) -> Any:
            with count:
                calls[0] += 1
            return function(*args, timeout=CALL_TIMEOUT)

        gate = threading.Barrier(JOBS)
        plans = [
            (rng.choice(("alice", "bob")), rng.randrange(0, 400), rng.choice(TAILS))
            for _ in range(JOBS)
        ]

        def start(plan: tuple[str, int, str]) -> str:
            user, lines, tail = plan
            gate.wait(CALL_TIMEOUT)
            command = shell(WRITER.format(lines=lines, tail=tail))
            response = counted(stubs[user].Start, pb.StartRequest(command=command))
            job_id: str = response.job.id
            return job_id

        with ThreadPoolExecutor(JOBS) as pool:
            job_ids = list(pool.map(start, plans))
        seen = {job_id: Seen() for job_id in job_ids}
        work: list[Callable[[], None]] = []
        for job_id, (user, _, _) in zip(job_ids, plans, strict=True):
            record = seen[job_id]
            for _ in range(STOPPERS):
                delay, grace = rng.uniform(0, 0.3), rng.choice((0.0, 0.2, None))
                work.append(self.stopper(stubs[user], job_id, delay, grace, record))
            for _ in range(POLLERS):
                work.append(self.poller(counted, stubs["alice"], job_id, record))
            for _ in range(FOLLOWERS):
                work.append(self.follower(stubs[user], job_id, record))
        rng.shuffle(work)
        with ThreadPoolExecutor(len(work)) as pool:
            for future in [pool.submit(task) for task in work]:
                future.result(timeout=3 * CALL_TIMEOUT)
        for job_id, record in seen.items():
            late = stubs["alice"].StreamOutput(
                pb.StreamOutputRequest(job_id=job_id), timeout=CALL_TIMEOUT
            )
            record.add("outputs", runs(late))
        return seen, calls[0] + len(work)

    def stopper(
        self, stub: Any, job_id: str, delay: float, grace: float | None, seen: Seen
    ) -> Callable[[], None]:
        def stop() -> None:
            threading.Event().wait(delay)
            request = pb.StopRequest(job_id=job_id)
            if grace is not None:
                request.grace_seconds = grace
            seen.add("stops", stub.Stop(request, timeout=CALL_TIMEOUT).job)

        return stop

    def poller(
        self, counted: Callable[..., Any], stub: Any, job_id: str, seen: Seen
    ) -> Callable[[], None]:
        def poll() -> None:
            statuses: list[pb.JobStatus] = []
            after_end = 0
            while after_end < 20:
                response = counted(stub.Status, pb.StatusRequest(job_id=job_id))
                statuses.append(response.job)
                after_end += response.job.state in ENDED
            seen.add("statuses", statuses)

        return poll

    def follower(self, stub: Any, job_id: str, seen: Seen) -> Callable[[], None]:
        def follow() -> None:
            request = pb.StreamOutputRequest(job_id=job_id)
            seen.add("outputs", runs(stub.StreamOutput(request, timeout=CALL_TIMEOUT)))

        return follow

    def check(self, job_id: str, seen: Seen) -> None:
        self.assertEqual(len(seen.stops), STOPPERS, job_id)
        final = seen.stops[0]
        self.assertIn(final.state, ENDED, final)
        for answer in seen.stops[1:]:
            self.assertEqual(answer, final, "two Stop answers differ")
        for statuses in seen.statuses:
            order = [ORDER[status.state] for status in statuses]
            self.assertEqual(order, sorted(order), f"state went back: {statuses}")
            for status in statuses:
                if status.state in ENDED:
                    self.assertEqual(status, final, "a final status changed")
        first = seen.outputs[0]
        for output in seen.outputs[1:]:
            self.assertEqual(output, first, "followers saw different bytes")
        self.assertEqual(sum(len(data) for _, data in first), final.output_bytes, final)

    async def test_concurrent_calls_keep_final_status_and_output_identical(
        self,
    ) -> None:
        totals: defaultdict[str, int] = defaultdict(int)
        for number in range(ROUNDS):
            seen, calls = await self.in_thread(self.round, number)
            for job_id, record in seen.items():
                self.check(job_id, record)
                totals["jobs"] += 1
                totals["exited"] += record.stops[0].state == pb.JOB_STATE_EXITED
            totals["calls"] += calls
        self.assertEqual(totals["jobs"], ROUNDS * JOBS)
        self.assertGreater(totals["calls"], 2000)
        # Both endings were raced: some jobs exited first, some were stopped.
        self.assertTrue(0 < totals["exited"] < totals["jobs"], dict(totals))

    async def test_a_stop_racing_a_start_never_loses_the_job(self) -> None:
        """Stop as soon as Start answers, from another thread, many times."""

        def race() -> list[pb.JobStatus]:
            stub = self.stub("bob")
            finals: list[pb.JobStatus] = []
            handed: list[str] = []
            ready = threading.Condition()

            def starter() -> None:
                for _ in range(40):
                    response = stub.Start(
                        pb.StartRequest(command=shell("echo hi; sleep 1000")),
                        timeout=CALL_TIMEOUT,
                    )
                    with ready:
                        handed.append(response.job.id)
                        ready.notify()

            def stopper() -> None:
                for _ in range(40):
                    with ready:
                        ready.wait_for(lambda: bool(handed), CALL_TIMEOUT)
                        job_id = handed.pop(0)
                    request = pb.StopRequest(job_id=job_id, grace_seconds=0)
                    finals.append(stub.Stop(request, timeout=CALL_TIMEOUT).job)

            threads = [threading.Thread(target=t) for t in (starter, stopper)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(3 * CALL_TIMEOUT)
            return finals

        finals = await self.in_thread(race)
        self.assertEqual(len(finals), 40)
        for final in finals:
            self.assertEqual(final.state, pb.JOB_STATE_KILLED, final)
            self.assertTrue(final.stop_requested, final)
        listed = await self.call("bob", "List", pb.ListRequest())
        self.assertTrue(all(job.state in ENDED for job in listed.jobs))


class StopDuringShutdownTests(APITestCase):
    stop_grace = 0.5

    async def test_shutdown_is_not_held_up_by_an_earlier_stops_long_grace(
        self,
    ) -> None:
        # A job that ignores SIGTERM, being stopped with a grace far longer
        # than the server's: shutdown must still KILL it after stop_grace.
        job_id = await self.start_job("bob", shell("trap '' TERM; sleep 1000"))
        request = pb.StopRequest(job_id=job_id, grace_seconds=LONG_GRACE)
        stopping = self.call("bob", "Stop", request)
        stopping.addErrback(lambda _: None)  # ended by the shutdown
        await self.eventually(
            lambda: self.manager.status(job_id).stop_requested, "the stop began"
        )
        began = reactor.seconds()
        await self.stop_server()
        took = reactor.seconds() - began
        await stopping
        self.assertLess(took, self.stop_grace + 2.0, f"shutdown took {took:.1f} s")
