"""Tests for jobworker.job.board: published statuses, read from any thread."""

from __future__ import annotations

import threading
from dataclasses import replace

from twisted.trial import unittest

from jobworker.errors import JobNotFound
from jobworker.job.board import StatusBoard
from jobworker.model import JobState, JobStatus, Limits


def status(job_id: str, started_at: float, output_bytes: int = 0) -> JobStatus:
    return JobStatus(
        id=job_id,
        owner="alice",
        command=(b"true",),
        state=JobState.RUNNING,
        limits=Limits(),
        started_at=started_at,
        ended_at=None,
        exit_code=None,
        signal=None,
        oom_killed=False,
        stop_requested=False,
        output_bytes=output_bytes,
        output_truncated=False,
    )


class StatusBoardTests(unittest.TestCase):
    def test_latest_status_replaces_the_earlier_one(self) -> None:
        board = StatusBoard()
        board.publish(status("a", 1.0))
        board.publish(status("a", 1.0, output_bytes=5))
        self.assertEqual(board.get("a").output_bytes, 5)
        self.assertEqual(len(board.all()), 1)

    def test_unknown_and_malformed_ids_are_not_found(self) -> None:
        board = StatusBoard()
        board.publish(status("a", 1.0))
        self.assertRaises(JobNotFound, board.get, "b")
        self.assertRaises(JobNotFound, board.get, None)

    def test_all_is_oldest_first(self) -> None:
        board = StatusBoard()
        for job_id, started in (("late", 3.0), ("early", 1.0), ("middle", 2.0)):
            board.publish(status(job_id, started))
        self.assertEqual([s.id for s in board.all()], ["early", "middle", "late"])

    def test_readers_on_other_threads_never_go_back_in_time(self) -> None:
        board = StatusBoard()
        board.publish(status("a", 1.0))
        seen: list[int] = []
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                seen.append(board.get("a").output_bytes)
                seen.extend(s.output_bytes for s in board.all())

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for n in range(1, 5000):
                board.publish(replace(status("a", 1.0), output_bytes=n))
        finally:
            done.set()
            reader.join(10)
        self.assertFalse(reader.is_alive())
        self.assertTrue(seen)
        self.assertEqual(seen, sorted(seen))
        self.assertEqual(board.get("a").output_bytes, 4999)
