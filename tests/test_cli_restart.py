"""The CLI on jobs of an earlier run that the journal gave back.

The state directory is made as a crashed server leaves it (a running job's
record and its output) before a real server starts on it.
"""

from __future__ import annotations

import json
import os
import time
import uuid

from twisted.trial import unittest

from jobworker.job.journal import Journal
from jobworker.job.outputlog import HEADER
from jobworker.model import JobState, JobStatus, Limits, Stream
from tests import pkiutil
from tests.cliutil import start_server


class LostJobTests(unittest.TestCase):
    """A job a crashed server left running: the CLI says it was lost."""

    def setUp(self) -> None:
        state_dir = os.path.abspath(self.mktemp())
        self.job_id = str(uuid.uuid4())
        job_dir = os.path.join(state_dir, "jobs", self.job_id)
        os.makedirs(os.path.join(job_dir, "work"))
        with open(os.path.join(job_dir, "output.log"), "wb") as log:
            log.write(HEADER.pack(Stream.STDOUT, 6) + b"hello\n")
        running = JobStatus(
            id=self.job_id,
            owner="alice",
            command=(b"sleep", b"1000"),
            state=JobState.RUNNING,
            limits=Limits(),
            started_at=time.time() - 60,
        )
        Journal(state_dir).save(running, 0)
        options = ("--no-isolation", "--state-dir", state_dir)
        self.harness = start_server(self, pkiutil.pki_dir(), options)

    async def test_a_lost_job_is_shown_listed_and_read(self) -> None:
        result = await self.harness.cli("status", "--json", self.job_id)
        shown = json.loads(result.out)
        self.assertEqual(
            (shown["state"], shown["exit_code"], shown["signal"]), ("lost", None, None)
        )
        self.assertEqual(shown["output_bytes"], 6)
        listed = await self.harness.cli("list", "-q", "--state", "lost")
        self.assertEqual(listed.out.decode().split(), [self.job_id])
        self.assertEqual((await self.harness.cli("logs", self.job_id)).out, b"hello\n")

    async def test_wait_for_a_lost_job_fails_and_says_why(self) -> None:
        result = await self.harness.cli("wait", self.job_id)
        self.assertEqual(result.code, 1)
        self.assertEqual(
            result.err.decode(),
            f"jobworker: job {self.job_id} was lost: the server stopped while it"
            " ran, so how it ended is not known\n",
        )
