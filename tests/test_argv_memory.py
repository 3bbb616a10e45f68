"""A finished job's argv is held once by the server, however many places show it.

A job started with a 1 MiB argv stays in memory until it is removed: its
record, its status on the board, the journal's last saved status and every
status made of it share the one tuple of `bytes` (identity), and after the
job has ended the server holds one copy of the argv's bytes (tracemalloc:
the large blocks still allocated since the Start).
"""

from __future__ import annotations

# grpc-core reads its settings when grpc is first imported: ours go first.
import jobworker.server.api  # noqa: F401

# isort: split
import gc
import tracemalloc

from jobworker.job.manager import MAX_ARGUMENT, JobManager
from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase

# The most a command may be (MAX_COMMAND, 1 MiB): `true` and 7 of the longest
# arguments, each of its own byte so that no two share memory.
ARGUMENTS = [bytes([ord("a") + n]) * MAX_ARGUMENT for n in range(7)]
ARGV = [b"true", *ARGUMENTS]
ARGV_BYTES = sum(map(len, ARGUMENTS))
LARGE = 64 * 1024


def holders(manager: JobManager, job_id: str) -> list[tuple[bytes, ...]]:
    """Every command tuple the manager keeps, or makes, for the job."""
    job = manager._jobs[job_id]
    kept = [manager.board.get(job_id).command, manager.status(job_id).command]
    kept.append(manager.journal._saved[job_id].command)
    kept.append(job.status().command)
    record = getattr(job, "record", None)
    if record is not None:
        kept.append(record.command)
    return kept


class ArgvMemoryTests(APITestCase):
    def assert_one_tuple(self, manager: JobManager, job_id: str) -> None:
        kept = holders(manager, job_id)
        self.assertEqual(list(kept[0]), ARGV)
        for command in kept[1:]:
            self.assertIs(command, kept[0])

    async def test_a_finished_jobs_argv_is_held_once(self) -> None:
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        job_id = await self.start_job("bob", ARGV)
        await self.call("bob", "Wait", pb.WaitRequest(job_id=job_id))
        self.assert_one_tuple(self.manager, job_id)
        gc.collect()
        # Blocks of at least LARGE bytes each, still allocated since Start.
        held = sum(
            stat.size
            for stat in tracemalloc.take_snapshot().statistics("traceback")
            if stat.size >= LARGE * stat.count
        )
        # One copy (and less than half of a second one).
        self.assertGreaterEqual(held, ARGV_BYTES)
        self.assertLess(held, ARGV_BYTES * 1.5)

    async def test_a_restored_jobs_argv_is_held_once(self) -> None:
        job_id = await self.start_job("bob", ARGV)
        await self.call("bob", "Wait", pb.WaitRequest(job_id=job_id))
        await self.stop_server()
        manager = JobManager(self.manager.journal.jobs_dir.removesuffix("/jobs"))
        self.addCleanup(manager.shutdown)
        self.assert_one_tuple(manager, job_id)
