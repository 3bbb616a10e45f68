"""The CLI against a server that isolates jobs (root: cgroups and namespaces)."""

from __future__ import annotations

import json
import os
import signal

from twisted.trial import unittest

from jobworker.cli.formatting import USAGE_FIELDS
from tests.cliutil import CLITestCase, started_job


class IsolatedCLITests(CLITestCase):
    server_options = ()

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("isolating jobs needs root")
        super().setUp()

    async def test_run_works_in_isolation(self) -> None:
        result = await self.harness.cli("run", "--", "sh", "-c", "echo hi; exit 5")
        self.assertEqual((result.out, result.err, result.code), (b"hi\n", b"", 5))

    async def test_job_sees_only_its_own_processes(self) -> None:
        result = await self.harness.cli(
            "run", "--", "sh", "-c", "ls /proc | grep -c '^[0-9]'"
        )
        self.assertEqual(result.code, 0, result.err)
        self.assertLessEqual(int(result.out), 4, result.out)

    async def test_out_of_memory_is_reported(self) -> None:
        hog = "x = bytearray(512 << 20)"
        result = await self.harness.cli(
            "run", "--memory", "64M", "--", "/usr/bin/python3", "-c", hog
        )
        self.assertEqual(result.code, 128 + signal.SIGKILL, result.err)
        job = json.loads((await self.harness.cli("list", "--json")).out)[-1]
        self.assertIs(job["oom_killed"], True)
        self.assertEqual(job["limits"]["memory_bytes"], 64 << 20)
        said = (
            f"jobworker: job {job['id']} ran out of memory: killed by the OOM"
            " killer (killed by SIGKILL, memory limit 64M)\n"
        )
        self.assertEqual(result.err, said.encode())
        waited = await self.harness.cli("wait", job["id"])
        self.assertEqual((waited.err, waited.code), (said.encode(), result.code))

    async def test_status_shows_usage_while_running_and_at_the_end(self) -> None:
        job_id = await started_job(
            self.harness,
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null; echo ready;"
            " exec sleep 600",
        )
        await self.wait_for_output(job_id, len(b"ready\n"))
        usage = (await self.status(job_id))["usage"]
        assert isinstance(usage, dict)
        self.assertEqual(set(usage), set(USAGE_FIELDS))
        self.assertGreater(usage["cpu_seconds"], 0)
        self.assertGreaterEqual(usage["memory_peak_bytes"], 16 << 20)
        for name in ("io_read_bytes", "io_write_bytes"):
            self.assertIsInstance(usage[name], int)
        shown = await self.harness.cli("status", job_id)
        self.assertRegex(
            shown.out, rb"\nusage: +cpu [\d.]+ s, memory peak [\d.]+M, read \S+,"
        )
        stopped = await self.harness.cli("stop", "--grace", "0", job_id)
        self.assertRegex(stopped.out, rb"\nusage: +cpu [\d.]+ s, memory peak")
        final = (await self.status(job_id))["usage"]
        assert isinstance(final, dict)
        self.assertGreaterEqual(final["cpu_seconds"], usage["cpu_seconds"])
        self.assertGreaterEqual(final["memory_peak_bytes"], 16 << 20)

    async def test_stop_kills_the_whole_job(self) -> None:
        job_id = await started_job(
            self.harness, "sh", "-c", "sleep 600 & exec sleep 600"
        )
        result = await self.harness.cli("stop", "--grace", "1", job_id)
        self.assertEqual(result.code, 0, result.err)
        self.assertIn(b"killed SIGTERM (stop requested)", result.out)
