"""End-to-end tests of the `jobworker` CLI against a real server over mTLS."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import uuid

from twisted.trial import unittest

from jobworker.server.api import paging
from tests.cliutil import CLITestCase, start_server, started_job
from tests.procutil import marker

UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\n")
FIELDS = {
    "id",
    "owner",
    "command",
    "state",
    "exit_code",
    "signal",
    "oom_killed",
    "stop_requested",
    "started_at",
    "ended_at",
    "limits",
    "output_bytes",
    "output_truncated",
    "output_truncated_by",
    "usage",
    "request_id",
}


class RunTests(CLITestCase):
    async def test_run_prints_output_and_exits_zero(self) -> None:
        result = await self.harness.cli("run", "--", "echo", "hello")
        self.assertEqual((result.out, result.err, result.code), (b"hello\n", b"", 0))

    async def test_run_passes_the_exit_code_through(self) -> None:
        result = await self.harness.cli("run", "--", "sh", "-c", "exit 3")
        self.assertEqual(result.code, 3)

    async def test_run_exits_128_plus_the_signal(self) -> None:
        result = await self.harness.cli("run", "--", "sh", "-c", "kill -9 $$")
        self.assertEqual(result.code, 128 + signal.SIGKILL)
        result = await self.harness.cli("run", "--", "sh", "-c", "kill -TERM $$")
        self.assertEqual(result.code, 128 + signal.SIGTERM)

    async def test_run_copies_stdout_and_stderr_byte_for_byte(self) -> None:
        script = r"printf 'out\377\n'; printf 'err\000x' >&2; printf 'more'"
        result = await self.harness.cli("run", "--", "sh", "-c", script)
        self.assertEqual(result.out, b"out\xff\nmore")
        self.assertEqual(result.err, b"err\x00x")
        self.assertEqual(result.code, 0)

    async def test_run_takes_limits(self) -> None:
        result = await self.harness.cli(
            "run", "--cpu", "0.5", "--memory", "256M", "--pids", "64", "--", "true"
        )
        self.assertEqual(result.code, 0, result.err)

    async def test_start_failure_is_one_line(self) -> None:
        result = await self.harness.cli("run", "--", "/nonexistent/program")
        self.assertEqual(result.code, 1)
        self.assertTrue(result.err.startswith(b"jobworker: "), result.err)
        self.assertEqual(result.err.count(b"\n"), 1, result.err)

    async def test_limit_above_the_maximum_is_refused(self) -> None:
        result = await self.harness.cli("start", "--pids", "999999", "--", "true")
        self.assertEqual(result.code, 1)
        self.assertIn(b"maximum", result.err)


class CommandTests(CLITestCase):
    async def test_start_prints_only_the_job_id(self) -> None:
        result = await self.harness.cli("start", "--", "true")
        self.assertEqual(result.code, 0, result.err)
        self.assertRegex(result.out, UUID)

    async def test_status_json_has_every_field(self) -> None:
        job_id = await started_job(self.harness, "sh", "-c", "echo hi; exit 4")
        await self.harness.cli("logs", "-f", job_id)
        status = await self.status(job_id)
        self.assertEqual(set(status), FIELDS)
        self.assertEqual(status["id"], job_id)
        self.assertEqual(status["owner"], "alice")
        self.assertEqual(status["command"], ["sh", "-c", "echo hi; exit 4"])
        self.assertEqual(status["state"], "exited")
        self.assertEqual((status["exit_code"], status["signal"]), (4, None))
        self.assertIs(status["oom_killed"], False)
        self.assertIs(status["stop_requested"], False)
        self.assertRegex(str(status["started_at"]), r"^\d{4}-\d\d-\d\dT[\d:.]+Z$")
        self.assertRegex(str(status["ended_at"]), r"^\d{4}-\d\d-\d\dT[\d:.]+Z$")
        self.assertEqual(
            status["limits"],
            {
                "cpu": 1.0,
                "memory_bytes": 512 << 20,
                "io_read_bps": None,
                "io_write_bps": None,
                "pids": 1024,
            },
        )
        self.assertIsInstance(status["output_bytes"], int)
        self.assertIs(status["output_truncated"], False)
        self.assertIsNone(status["output_truncated_by"])
        # This server does not isolate jobs, so it measures nothing.
        self.assertEqual(
            status["usage"],
            {
                "cpu_seconds": None,
                "memory_peak_bytes": None,
                "io_read_bytes": None,
                "io_write_bytes": None,
                "pids_peak": None,
            },
        )
        self.assertIsNone(status["request_id"])

    async def test_start_with_a_request_id_twice_starts_one_job(self) -> None:
        argv = ("start", "--request-id", "nightly-42", "--", "sleep", marker())
        first = await self.harness.cli(*argv)
        second = await self.harness.cli(*argv)
        self.assertEqual((first.code, second.code), (0, 0), second.err)
        self.assertEqual(first.out, second.out)
        job_id = first.out.decode().strip()
        self.assertEqual((await self.status(job_id))["request_id"], "nightly-42")
        shown = await self.harness.cli("status", job_id)
        self.assertIn(b"request:  nightly-42", shown.out)
        other = await self.harness.cli(*argv, user="bob")
        self.assertNotEqual(other.out, first.out)

    async def test_status_json_escapes_invalid_utf8_reversibly(self) -> None:
        result = await self.harness.cli("start", "--", "echo", b"caf\xc3\xa9\xff")
        job_id = result.out.decode().strip()
        command = (await self.status(job_id))["command"]
        assert isinstance(command, list)
        self.assertEqual(command[1], "caf\xe9\udcff")
        self.assertEqual(os.fsencode(command[1]), b"caf\xc3\xa9\xff")

    async def test_status_without_json_is_a_summary(self) -> None:
        job_id = await started_job(self.harness, "sh", "-c", "exit 2")
        await self.harness.cli("logs", "-f", job_id)
        result = await self.harness.cli("status", job_id)
        self.assertEqual(result.code, 0, result.err)
        self.assertIn(f"id:       {job_id}".encode(), result.out)
        self.assertIn(b"state:    exited 2", result.out)
        self.assertIn(b"command:  sh -c 'exit 2'", result.out)
        self.assertIn(b"limits:   cpu 1, memory 512M", result.out)
        self.assertIn(b"usage:    -\n", result.out)

    async def test_stop_returns_when_the_job_has_ended(self) -> None:
        job_id = await started_job(self.harness, "sleep", "600")
        result = await self.harness.cli("stop", "--grace", "2", job_id)
        self.assertEqual(result.code, 0, result.err)
        self.assertIn(b"killed SIGTERM (stop requested)", result.out)
        status = await self.status(job_id)
        self.assertEqual((status["state"], status["signal"]), ("killed", 15))
        self.assertIs(status["stop_requested"], True)

    async def test_logs_prints_output_from_the_first_byte(self) -> None:
        job_id = await started_job(
            self.harness, "sh", "-c", "echo a; echo b >&2; echo c"
        )
        await self.harness.cli("logs", "-f", job_id)
        result = await self.harness.cli("logs", job_id)
        self.assertEqual((result.out, result.err, result.code), (b"a\nc\n", b"b\n", 0))

    async def test_logs_without_follow_returns_while_the_job_runs(self) -> None:
        script = "echo one; echo two >&2; echo three; exec sleep 600"
        job_id = await started_job(self.harness, "sh", "-c", script)
        await self.wait_for_output(job_id, 14)
        result = await self.harness.cli("logs", job_id)
        self.assertEqual((result.out, result.err), (b"one\nthree\n", b"two\n"))
        self.assertEqual(result.code, 0)
        self.assertEqual((await self.status(job_id))["state"], "running")
        await self.harness.cli("stop", "--grace", "0", job_id)

    async def test_late_followers_get_everything_from_the_first_byte(self) -> None:
        trigger = os.path.abspath(self.mktemp())
        os.chmod(os.path.dirname(trigger), 0o755)  # the job user must see it
        script = f"echo one; while [ ! -e {trigger} ]; do sleep 0.05; done; echo two"
        job_id = await started_job(self.harness, "sh", "-c", script)
        await self.wait_for_output(job_id)
        follower = self.harness.cli("logs", "-f", job_id)
        with open(trigger, "w"):
            pass
        during, after = await follower, await self.harness.cli("logs", "-f", job_id)
        self.assertEqual((during.out, during.code), (b"one\ntwo\n", 0))
        self.assertEqual((after.out, after.code), (b"one\ntwo\n", 0))

    async def test_list_shows_only_what_the_caller_may_see(self) -> None:
        bobs = await started_job(self.harness, "true", user="bob")
        carols = await started_job(self.harness, "true", user="carol")
        result = await self.harness.cli("list", "--no-trunc", user="bob")
        self.assertEqual(result.code, 0, result.err)
        self.assertTrue(result.out.startswith(b"ID "), result.out)
        self.assertIn(bobs.encode(), result.out)
        self.assertNotIn(carols.encode(), result.out)
        result = await self.harness.cli("list", "--json")
        jobs = json.loads(result.out)
        self.assertEqual({job["id"] for job in jobs}, {bobs, carols})
        self.assertEqual(set(jobs[0]), FIELDS)

    async def test_list_shows_every_page(self) -> None:
        self.patch(paging, "MAX_PAGE_SIZE", 2)
        started = [await started_job(self.harness, "true") for _ in range(5)]
        result = await self.harness.cli("list", "--no-trunc")
        self.assertEqual(result.code, 0, result.err)
        rows = result.out.decode().splitlines()[1:]
        self.assertEqual([row.split()[0] for row in rows], started)
        result = await self.harness.cli("list", "--json")
        self.assertEqual([job["id"] for job in json.loads(result.out)], started)

    async def test_list_shows_jobs_whose_commands_fill_a_page_each(self) -> None:
        # Each command is near the server's 1 MiB cap: one job per page.
        command = ["true", *["a" * (128 * 1024 - 1)] * 7]
        started = [
            await started_job(self.harness, *command, user="bob") for _ in range(3)
        ]
        result = await self.harness.cli("list", "--json")
        self.assertEqual(result.code, 0, result.err)
        jobs = json.loads(result.out)
        self.assertEqual([job["id"] for job in jobs], started)
        self.assertEqual(jobs[2]["command"], command)

    async def test_other_users_job_is_not_found(self) -> None:
        job_id = await started_job(self.harness, "sleep", "600", user="bob")
        expected = f"jobworker: job {job_id} not found\n".encode()
        for command in (["status"], ["logs"], ["logs", "-f"], ["stop"]):
            result = await self.harness.cli(*command, job_id, user="carol")
            self.assertEqual((result.err, result.code), (expected, 1), command)
        self.assertEqual((await self.status(job_id, user="alice"))["owner"], "bob")
        await self.harness.cli("stop", "--grace", "0", job_id, user="bob")

    async def test_ipv6_server_address_in_brackets(self) -> None:
        if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"):
            raise unittest.SkipTest("no IPv6 on this machine")
        harness = start_server(self, self.pki, self.server_options, host="::1")
        self.assertEqual(harness.address, f"[::1]:{harness.port}")
        result = await harness.cli("run", "--", "echo", "six")
        self.assertEqual((result.out, result.code), (b"six\n", 0), result.err)

    async def test_unknown_job_is_not_found(self) -> None:
        result = await self.harness.cli("status", "no-such-job")
        self.assertEqual(result.err, b"jobworker: job no-such-job not found\n")
        self.assertEqual(result.code, 1)


class SeveralJobsTests(CLITestCase):
    async def test_status_json_of_several_jobs_is_an_array(self) -> None:
        first = await started_job(self.harness, "true")
        second = await started_job(self.harness, "true")
        result = await self.harness.cli("status", "--json", first, second)
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual([job["id"] for job in json.loads(result.out)], [first, second])

    async def test_status_of_a_missing_job_among_several_says_so_and_fails(
        self,
    ) -> None:
        job_id = await started_job(self.harness, "true")
        result = await self.harness.cli("status", job_id, "no-such-job")
        self.assertEqual(result.code, 1)
        self.assertIn(f"id:       {job_id}".encode(), result.out)
        self.assertEqual(result.err, b"jobworker: job no-such-job not found\n")

    async def test_stop_stops_several_jobs(self) -> None:
        jobs = [await started_job(self.harness, "sleep", "600") for _ in range(2)]
        result = await self.harness.cli("stop", "--grace", "0", *jobs)
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(result.out.count(b"(stop requested)"), 2, result.out)
        for job_id in jobs:
            self.assertEqual((await self.status(job_id))["state"], "killed")


class TerminalEscapingTests(CLITestCase):
    CN = "evil\x1b[2J\nrow"

    async def test_owner_and_command_are_escaped_for_people(self) -> None:
        job_id = await started_job(
            self.harness, "echo", "\x1b]0;title\x07", user="escaper"
        )
        for args in (["list"], ["status", job_id]):
            result = await self.harness.cli(*args)
            self.assertEqual(result.code, 0, result.err)
            self.assertNotIn(b"\x1b", result.out, args)
            self.assertNotIn(b"\x07", result.out, args)
            self.assertIn(b"evil\\x1b[2J\\x0arow", result.out, args)
            self.assertIn(b"\\x1b]0;title\\x07", result.out, args)
        result = await self.harness.cli("list")
        short = job_id[:12].encode()
        rows = [row for row in result.out.splitlines() if short in row]
        self.assertEqual(len(rows), 1, result.out)

    async def test_json_keeps_the_strings_unchanged(self) -> None:
        job_id = await started_job(self.harness, "echo", "\x1b[1m", user="escaper")
        status = await self.status(job_id)
        self.assertEqual(status["owner"], self.CN)
        self.assertEqual(status["command"], ["echo", "\x1b[1m"])


class WaitTests(CLITestCase):
    async def test_wait_exits_with_the_jobs_code(self) -> None:
        job_id = await started_job(self.harness, "sh", "-c", "exit 3")
        result = await self.harness.cli("wait", job_id)
        self.assertEqual((result.out, result.err, result.code), (b"", b"", 3))

    async def test_wait_returns_once_someone_stops_the_job_and_says_so(
        self,
    ) -> None:
        job_id = await started_job(self.harness, "sleep", "600")
        waiting = self.harness.cli("wait", job_id)
        stopped = await self.harness.cli("stop", "--grace", "5", job_id)
        self.assertEqual(stopped.code, 0, stopped.err)
        result = await waiting
        self.assertEqual(result.code, 128 + signal.SIGTERM)
        self.assertEqual(
            result.err,
            f"jobworker: job {job_id} was stopped by a stop request"
            " (killed by SIGTERM)\n".encode(),
        )

    async def test_wait_for_several_jobs_exits_with_the_last_ones_code(
        self,
    ) -> None:
        first = await started_job(self.harness, "sh", "-c", "exit 4")
        second = await started_job(self.harness, "sh", "-c", "exit 5")
        result = await self.harness.cli("wait", first, second)
        self.assertEqual(result.code, 5, result.err)
        result = await self.harness.cli("wait", second, first)
        self.assertEqual(result.code, 4, result.err)

    async def test_wait_for_a_missing_job_fails(self) -> None:
        job_id = await started_job(self.harness, "true")
        result = await self.harness.cli("wait", job_id, "no-such-job")
        self.assertEqual(result.err, b"jobworker: job no-such-job not found\n")
        self.assertEqual(result.code, 1)

    async def test_wait_for_another_users_job_is_not_found(self) -> None:
        job_id = await started_job(self.harness, "true", user="bob")
        result = await self.harness.cli("wait", job_id, user="carol")
        self.assertEqual(result.err, f"jobworker: job {job_id} not found\n".encode())

    async def test_run_says_when_a_signal_killed_the_job(self) -> None:
        result = await self.harness.cli("run", "--", "sh", "-c", "kill -9 $$")
        self.assertEqual(result.code, 128 + signal.SIGKILL)
        self.assertRegex(
            result.err.decode(),
            r"^jobworker: job [0-9a-f-]{36} was killed by SIGKILL\n$",
        )

    async def test_run_says_when_someone_else_stopped_the_job(self) -> None:
        running = self.harness.cli("run", "--", "sh", "-c", "echo up; exec sleep 600")
        job_id = None
        for _ in range(200):
            jobs = json.loads((await self.harness.cli("list", "--json")).out)
            if jobs and jobs[-1]["output_bytes"]:
                job_id = jobs[-1]["id"]
                break
        assert job_id is not None
        await self.harness.cli("stop", "--grace", "5", job_id)
        result = await running
        self.assertEqual((result.out, result.code), (b"up\n", 128 + signal.SIGTERM))
        self.assertIn(b"was stopped by a stop request (killed by SIGTERM)", result.err)


class ListTests(CLITestCase):
    async def test_empty_list_has_a_header(self) -> None:
        result = await self.harness.cli("list")
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(
            result.out.split(),
            [b"ID", b"OWNER", b"STATE", b"STARTED", b"DURATION", b"COMMAND"],
        )

    async def test_list_shows_short_ids_ages_and_durations(self) -> None:
        job_id = await started_job(self.harness, "sh", "-c", "exit 0")
        await self.harness.cli("wait", job_id)
        result = await self.harness.cli("list")
        header, row = result.out.decode().splitlines()
        self.assertRegex(
            row,
            rf"^{job_id[:12]}  alice  exited 0  \d+ s ago  \d+ s +sh -c 'exit 0'$",
        )
        self.assertNotIn(job_id, row)
        self.assertEqual(header.index("COMMAND"), row.index("sh -c"))

    async def test_list_cuts_the_command_to_the_terminal_width(self) -> None:
        await started_job(self.harness, "echo", "x" * 200)
        env = self.harness.env(COLUMNS="80")
        result = await self.harness.cli("list", env=env)
        row = result.out.decode().splitlines()[1]
        self.assertEqual(len(row), 80, row)
        self.assertTrue(row.endswith("x\u2026"), row)
        result = await self.harness.cli("list", "--no-trunc", env=env)
        self.assertTrue(result.out.decode().splitlines()[1].endswith("x" * 200))

    async def test_list_quiet_prints_whole_ids_only(self) -> None:
        jobs = [await started_job(self.harness, "true") for _ in range(2)]
        result = await self.harness.cli("list", "-q")
        self.assertEqual(result.out.decode().split(), jobs)

    async def test_list_filters_by_state_and_owner(self) -> None:
        ended = await started_job(self.harness, "true", user="bob")
        await self.harness.cli("wait", ended)
        running = await started_job(self.harness, "sleep", "600", user="bob")
        carols = await started_job(self.harness, "sleep", "600", user="carol")
        result = await self.harness.cli("list", "-q", "--state", "running")
        self.assertEqual(result.out.decode().split(), [running, carols])
        result = await self.harness.cli(
            "list", "-q", "--state", "exited", "--state", "killed"
        )
        self.assertEqual(result.out.decode().split(), [ended])
        result = await self.harness.cli("list", "-q", "--owner", "bob")
        self.assertEqual(result.out.decode().split(), [ended, running])
        # A user sees only its own jobs, whatever owner it names.
        result = await self.harness.cli("list", "-q", "--owner", "carol", user="bob")
        self.assertEqual((result.out, result.code), (b"", 0))
        result = await self.harness.cli("stop", "--grace", "0", running, carols)
        self.assertEqual(result.code, 0, result.err)


class ShortIdTests(CLITestCase):
    async def test_a_unique_prefix_names_the_job(self) -> None:
        job_id = await started_job(self.harness, "sh", "-c", "echo hi; exit 6")
        for prefix in (job_id[:4], job_id[:12]):
            result = await self.harness.cli("wait", prefix)
            self.assertEqual((result.err, result.code), (b"", 6))
            result = await self.harness.cli("logs", prefix)
            self.assertEqual(result.out, b"hi\n")
            status = await self.status(prefix)
            self.assertEqual(status["id"], job_id)

    async def test_stop_takes_a_prefix(self) -> None:
        job_id = await started_job(self.harness, "sleep", "600")
        result = await self.harness.cli("stop", "--grace", "0", job_id[:8])
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual((await self.status(job_id))["state"], "killed")

    async def test_a_prefix_of_fewer_than_4_characters_is_not_found(self) -> None:
        job_id = await started_job(self.harness, "true")
        result = await self.harness.cli("status", job_id[:3])
        self.assertEqual(
            result.err, f"jobworker: job {job_id[:3]} not found\n".encode()
        )

    async def test_an_ambiguous_prefix_lists_the_matches(self) -> None:
        ids = iter(
            uuid.UUID(f"abcd{n:04x}-0000-4000-8000-000000000000") for n in range(3)
        )
        real = uuid.uuid4
        # The server runs in this process: its job ids come from here.
        self.patch(uuid, "uuid4", lambda: next(ids, None) or real())
        jobs = [await started_job(self.harness, "true") for _ in range(2)]
        bobs = await started_job(self.harness, "true", user="bob")
        # alice is an admin: every job counts for her.
        result = await self.harness.cli("status", "abcd")
        self.assertEqual(result.code, 1)
        self.assertEqual(
            result.err,
            f"jobworker: job id prefix 'abcd' matches 3 jobs: {jobs[0]}, {jobs[1]},"
            f" {bobs}; give more of the id\n".encode(),
        )
        result = await self.harness.cli("status", "--json", "abcd0001", "abcd0002")
        self.assertEqual([job["id"] for job in json.loads(result.out)], [jobs[1], bobs])
        # Bob's prefix is resolved among his jobs only: unique for him, and
        # alice's jobs (he may not see) are never named.
        result = await self.harness.cli("status", "--json", "abcd", user="bob")
        self.assertEqual(json.loads(result.out)["id"], bobs, result.err)
        result = await self.harness.cli("status", "abcd0000", user="bob")
        self.assertEqual(result.err, b"jobworker: job abcd0000 not found\n")
        result = await self.harness.cli("status", "abcd", user="carol")
        self.assertEqual(result.err, b"jobworker: job abcd not found\n")


class LimitsTests(CLITestCase):
    async def test_a_limit_below_the_minimum_is_said_as_typed(self) -> None:
        result = await self.harness.cli("run", "--memory", "1", "--", "true")
        self.assertEqual(result.code, 2)
        self.assertEqual(
            result.err,
            b"jobworker: --memory 1 is below the minimum, 1M"
            b" (see 'jobworker run --help')\n",
        )
        result = await self.harness.cli("start", "--cpu", "0.0001", "--", "true")
        self.assertIn(b": --cpu 0.0001 is below the minimum, 0.001 (", result.err)

    async def test_a_limit_above_the_servers_maximum_is_in_units(self) -> None:
        result = await self.harness.cli("start", "--memory", "1T", "--", "true")
        self.assertEqual(result.code, 1)
        self.assertEqual(
            result.err,
            b"jobworker: memory 1T is above this server's maximum, 4G\n",
        )

    async def test_limits_shows_the_servers_defaults_and_maximums(self) -> None:
        cpus = len(os.sched_getaffinity(0))
        result = await self.harness.cli("limits")
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(
            [line.split() for line in result.out.decode().splitlines()],
            [
                ["OPTION", "DEFAULT", "MAXIMUM", "MINIMUM"],
                ["--cpu", "1", str(cpus), "0.001"],
                ["--memory", "512M", "4G", "1M"],
                ["--io-read-bps", "unlimited", "unlimited", "1/s"],
                ["--io-write-bps", "unlimited", "unlimited", "1/s"],
                ["--pids", "1024", "4096", "1"],  # issue 14: not pid_max
            ],
        )
        reply = json.loads((await self.harness.cli("limits", "--json")).out)
        self.assertEqual(reply["defaults"]["memory_bytes"], 512 << 20)
        self.assertEqual(reply["maximums"]["pids"], 4096)
        self.assertIsNone(reply["maximums"]["io_read_bps"])
        self.assertEqual(reply["minimums"]["memory_bytes"], 1 << 20)


class ServerLimitsTests(CLITestCase):
    server_options = ("--no-isolation", "--max-memory", "2G", "--default-pids", "10")

    async def test_limits_follows_the_servers_options(self) -> None:
        reply = json.loads((await self.harness.cli("limits", "--json")).out)
        self.assertEqual(reply["maximums"]["memory_bytes"], 2 << 30)
        self.assertEqual(reply["defaults"]["pids"], 10)
        result = await self.harness.cli("start", "--memory", "3G", "--", "true")
        self.assertEqual(
            result.err, b"jobworker: memory 3G is above this server's maximum, 2G\n"
        )


class StdinAndPathTests(CLITestCase):
    async def test_piped_input_gets_a_warning_that_it_is_ignored(self) -> None:
        result = await self.harness.cli("run", "--", "cat", stdin=b"hi\n")
        self.assertEqual((result.out, result.code), (b"", 0))
        self.assertEqual(
            result.err,
            b"jobworker: warning: standard input is not sent to the job"
            b" (its stdin is empty; -i sends it)\n",
        )

    async def test_an_empty_ended_stdin_gets_no_warning(self) -> None:
        result = await self.harness.cli("run", "--", "cat")
        self.assertEqual((result.out, result.err, result.code), (b"", b"", 0))

    async def test_a_relative_program_path_is_the_jobs_not_the_callers(
        self,
    ) -> None:
        result = await self.harness.cli("run", "--", "./relative")
        self.assertEqual(result.code, 1)
        self.assertEqual(
            result.err,
            b"jobworker: './relative' not found: a relative path is looked up in"
            b" the job's working directory, not the caller's\n",
        )
        result = await self.harness.cli("run", "--", "no-such-program-here")
        self.assertEqual(
            result.err,
            b"jobworker: 'no-such-program-here' not found in the job's PATH\n",
        )
