"""`jobworker logs --tail N`, `--since`, `--timestamps` against a real server."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime

from twisted.trial import unittest

from jobworker.cli.logs import InvalidSince, LinePrefixer, parse_since, time_text
from jobworker.model import Stream
from tests.cliutil import CLITestCase, started_job

STAMP = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "


class LogsTests(CLITestCase):
    def flag_path(self) -> str:
        """A path the job polls for; the test creates it."""
        flag: str = os.path.abspath(self.mktemp())
        os.chmod(os.path.dirname(flag), 0o755)  # the job user must see it
        return flag

    async def ended_job(self, script: str) -> str:
        job_id = await started_job(self.harness, "sh", "-c", script)
        await self.harness.cli("wait", job_id)
        return job_id

    async def test_tail_prints_the_last_lines(self) -> None:
        job_id = await self.ended_job("seq 1 100000; printf 'no newline'")
        result = await self.harness.cli("logs", "--tail", "3", job_id)
        self.assertEqual((result.out, result.code), (b"99999\n100000\nno newline", 0))
        result = await self.harness.cli("logs", "-n", "0", job_id)
        self.assertEqual((result.out, result.code), (b"", 0))

    async def test_tail_counts_stdout_and_stderr_together(self) -> None:
        job_id = await self.ended_job("echo 1; echo 2 >&2; echo 3")
        result = await self.harness.cli("logs", "--tail", "2", job_id)
        self.assertEqual((result.out, result.err), (b"3\n", b"2\n"))

    async def test_tail_of_a_running_job_returns_without_follow(self) -> None:
        job_id = await started_job(self.harness, "sh", "-c", "seq 1 5; exec sleep 1000")
        await self.wait_for_output(job_id, 10)
        result = await self.harness.cli("logs", "--tail", "2", job_id)
        self.assertEqual((result.out, result.code), (b"4\n5\n", 0))
        await self.harness.cli("stop", "--grace", "0", job_id)

    async def test_since_prints_what_came_after_a_time(self) -> None:
        flag = self.flag_path()
        script = f"echo early; while [ ! -e {flag} ]; do sleep 0.05; done; echo late"
        job_id = await started_job(self.harness, "sh", "-c", script)
        await self.wait_for_output(job_id, 6)
        between = datetime.fromtimestamp(time.time(), UTC).isoformat()
        open(flag, "w").close()
        await self.harness.cli("wait", job_id)
        result = await self.harness.cli("logs", "--since", between, job_id)
        self.assertEqual((result.out, result.code), (b"late\n", 0), result.err)
        result = await self.harness.cli("logs", "--since", "1h", job_id)
        self.assertEqual(result.out, b"early\nlate\n")
        result = await self.harness.cli("logs", "--since", "2999-01-01", job_id)
        self.assertEqual(result.out, b"")

    async def test_a_bad_since_is_a_usage_error(self) -> None:
        result = await self.harness.cli("logs", "--since", "yesterday", "abcd")
        self.assertEqual(result.code, 2)
        self.assertIn(b"neither a duration", result.err)
        self.assertIn(b"see 'jobworker logs --help'", result.err)

    async def test_timestamps_start_each_line(self) -> None:
        flag = self.flag_path()
        script = (
            f"printf x; while [ ! -e {flag} ]; do sleep 0.05; done; printf 'y\\nz\\n'"
        )
        job_id = await started_job(self.harness, "sh", "-c", script)
        await self.wait_for_output(job_id, 1)
        open(flag, "w").close()
        await self.harness.cli("wait", job_id)
        result = await self.harness.cli("logs", "--timestamps", job_id)
        self.assertEqual(result.code, 0, result.err)
        self.assertRegex(
            result.out, re.compile(b"^" + STAMP + b"xy\n" + STAMP + b"z\n$")
        )
        status = await self.status(job_id)
        first = result.out[:24].decode()
        self.assertLessEqual(str(status["started_at"])[:19], first[:19])
        self.assertLessEqual(first[:19], str(status["ended_at"])[:19])

    async def test_tail_and_timestamps_go_together(self) -> None:
        job_id = await self.ended_job("echo a; echo b")
        result = await self.harness.cli("logs", "-t", "-n", "1", job_id)
        self.assertRegex(result.out, re.compile(b"^" + STAMP + b"b\n$"))


class SinceParsingTests(unittest.TestCase):
    def test_durations_are_before_now(self) -> None:
        now = 1_000_000.0
        self.assertEqual(parse_since("90s", now), now - 90)
        self.assertEqual(parse_since("5m", now), now - 300)
        self.assertEqual(parse_since("1h30m", now), now - 5400)
        self.assertEqual(parse_since("1.5h", now), now - 5400)
        self.assertEqual(parse_since("2d", now), now - 172800)
        self.assertEqual(parse_since("250ms", now), now - 0.25)

    def test_times_are_iso_8601(self) -> None:
        self.assertEqual(parse_since("1970-01-02T00:00:00Z", 0), 86400)
        self.assertEqual(parse_since("1970-01-02T01:00:00+01:00", 0), 86400)

    def test_anything_else_is_refused(self) -> None:
        for text in ("", "10", "5x", "m", "tomorrow", "1h 30m"):
            with self.assertRaises(InvalidSince, msg=text):
                parse_since(text, 0)


class PrefixTests(unittest.TestCase):
    def test_each_streams_lines_are_prefixed_once(self) -> None:
        prefixer = LinePrefixer()
        zero, one = time_text(0).encode() + b" ", time_text(1).encode() + b" "
        self.assertEqual(zero, b"1970-01-01T00:00:00.000Z ")
        out = prefixer.prefixed(Stream.STDOUT, b"a\nb", 0)
        self.assertEqual(out, zero + b"a\n" + zero + b"b")
        self.assertEqual(prefixer.prefixed(Stream.STDERR, b"e\n", 0), zero + b"e\n")
        # "b" goes on: its line has its prefix already.
        out = prefixer.prefixed(Stream.STDOUT, b"c\n\nd", 1)
        self.assertEqual(out, b"c\n" + one + b"\n" + one + b"d")
        self.assertEqual(prefixer.prefixed(Stream.STDOUT, b"x", None), b"x")
