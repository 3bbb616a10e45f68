"""Which cap truncated a job's output: in its status, its record, after a restart."""

from __future__ import annotations

from jobworker.job.storage import StorageGuard
from jobworker.model import JobState
from tests.managerutil import ManagerTestCase, output_of

BIG = 1 << 40


class TruncationCauseTests(ManagerTestCase):
    async def ended(self, script: bytes, **options: object) -> str:
        manager = self.make_manager(**options)
        status = await self.start_sh(script, manager)
        await output_of(manager, status.id)
        final = await manager.wait_ended(status.id)
        self.assertEqual(final.state, JobState.EXITED)
        await manager.shutdown()
        job_id: str = status.id
        return job_id

    async def test_the_cause_is_in_the_status_and_survives_a_restart(self) -> None:
        await self.manager.shutdown()
        quota = StorageGuard(self.state_dir, quota=6, min_free=0, free=lambda: BIG)
        capped = await self.ended(b"echo 123456789", output_cap=4)
        by_quota = await self.ended(b"echo 123456789", storage=quota)
        whole = await self.ended(b"echo 1")
        again = self.make_manager()
        causes = {
            job_id: (
                again.status(job_id).output_truncated,
                again.status(job_id).output_truncated_by,
            )
            for job_id in (capped, by_quota, whole)
        }
        self.assertEqual(
            causes,
            {
                capped: (True, "output-cap"),
                by_quota: (True, "user-output-quota"),
                whole: (False, ""),
            },
        )
        # The restored job's log says so too (what the job's log gave before).
        self.assertEqual(again._job(capped).output.truncated_by, "output-cap")
