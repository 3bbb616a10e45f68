"""`jobworker rm` and the output truncation cause, through the real CLI and server."""

from __future__ import annotations

import json

from twisted.trial import unittest

from jobworker.cli.formatting import truncation_text
from tests.cliutil import CLITestCase, started_job
from tests.procutil import marker


class RemoveTests(CLITestCase):
    async def ended_job(self, user: str = "alice") -> str:
        job_id = await started_job(self.harness, "echo", "hi", user=user)
        await self.harness.cli("wait", job_id, user=user)
        return job_id

    async def test_rm_prints_the_id_and_the_job_is_gone(self) -> None:
        job_id = await self.ended_job("bob")
        result = await self.harness.cli("rm", job_id[:8], user="bob")
        self.assertEqual(
            (result.out, result.err, result.code), (f"{job_id}\n".encode(), b"", 0)
        )
        status = await self.harness.cli("status", job_id, user="bob")
        self.assertEqual(status.code, 1)
        self.assertEqual(status.err, f"jobworker: job {job_id} not found\n".encode())

    async def test_rm_tries_each_job_and_says_each_failure(self) -> None:
        done = await self.ended_job("bob")
        running = await started_job(self.harness, "sleep", marker(), user="bob")
        others = await self.ended_job("carol")
        result = await self.harness.cli("rm", running, done, others, user="bob")
        self.assertEqual(result.code, 1)
        self.assertEqual(result.out, f"{done}\n".encode())
        self.assertEqual(
            result.err.decode().splitlines(),
            [
                f"jobworker: job {running} is running; only an ended job can be"
                " removed (stop it first)",
                f"jobworker: job {others} not found",
            ],
        )
        # Nothing of the others was touched; an admin may remove carol's.
        self.assertEqual((await self.status(running, "bob"))["state"], "running")
        admin = await self.harness.cli("rm", others, user="alice")
        self.assertEqual((admin.out, admin.code), (f"{others}\n".encode(), 0))

    async def test_rm_needs_a_job_id(self) -> None:
        result = await self.harness.cli("rm")
        self.assertEqual(result.code, 2)
        self.assertIn(b"jobworker rm --help", result.err)


class TruncationCauseTests(CLITestCase):
    server_options = ("--no-isolation", "--output-cap", "4")

    async def test_status_says_which_cap_truncated_the_output(self) -> None:
        job_id = await started_job(self.harness, "echo", "123456789")
        await self.harness.cli("wait", job_id)
        status = await self.status(job_id)
        self.assertEqual(
            (status["output_bytes"], status["output_truncated"]), (4, True)
        )
        self.assertEqual(status["output_truncated_by"], "output-cap")
        text = await self.harness.cli("status", job_id)
        self.assertIn(
            b"output:   4 bytes, truncated at the job's output cap (output-cap)\n",
            text.out,
        )
        listed = json.loads((await self.harness.cli("list", "--json")).out)
        self.assertEqual(listed[0]["output_truncated_by"], "output-cap")


class TruncationTextTests(unittest.TestCase):
    def test_each_cause_in_words(self) -> None:
        self.assertEqual(
            truncation_text("user-output-quota"),
            "truncated at the owner's output quota (user-output-quota)",
        )
        self.assertEqual(
            truncation_text("min-free-disk"),
            "truncated at the server's free-disk floor (min-free-disk)",
        )
        self.assertEqual(
            truncation_text("No space left on device"),
            "truncated: the server could not store it: No space left on device",
        )
        self.assertEqual(truncation_text(""), "truncated at a cap of the server")
        self.assertEqual(
            truncation_text("\x1b[2J"),
            "truncated: the server could not store it: \\x1b[2J",
        )
