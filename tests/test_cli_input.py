"""What a job is given by the CLI: environment variables (`-e`) and stdin (`-i`)."""

from __future__ import annotations

import os
from typing import Any

import grpc
from twisted.trial import unittest

from jobworker.v1 import jobworker_pb2 as pb
from tests.apiutil import APITestCase
from tests.cliutil import CLITestCase


class EnvironmentTests(CLITestCase):
    async def test_e_sets_variables_on_top_of_the_clean_environment(self) -> None:
        result = await self.harness.cli(
            "run", "-e", "FOO=a b", "--env", "BAR=", "-e", "X=1=2", "--", "env"
        )
        self.assertEqual(result.code, 0, result.err)
        lines = set(result.out.decode().splitlines())
        self.assertTrue({"FOO=a b", "BAR=", "X=1=2", "LANG=C.UTF-8"} <= lines, lines)
        self.assertFalse(any(line.startswith("JOBWORKER_") for line in lines))

    async def test_a_name_alone_takes_the_callers_value(self) -> None:
        env = self.harness.env(MY_TOKEN="s3cret")
        result = await self.harness.cli(
            "run", "-e", "MY_TOKEN", "--", "sh", "-c", 'echo "$MY_TOKEN"', env=env
        )
        self.assertEqual((result.out, result.code), (b"s3cret\n", 0), result.err)
        result = await self.harness.cli("run", "-e", "UNSET_HERE", "--", "true")
        self.assertEqual(result.code, 2)
        self.assertIn(b"UNSET_HERE is not set here", result.err)

    async def test_path_is_overridable_for_the_programs_look_up(self) -> None:
        result = await self.harness.cli("run", "-e", "PATH=/nonexistent", "--", "env")
        self.assertEqual(result.code, 1)
        self.assertIn(b"'env' not found in the job's PATH", result.err)
        result = await self.harness.cli(
            "run", "-e", "PATH=/bin:/usr/bin", "--", "sh", "-c", 'echo "$PATH"'
        )
        self.assertEqual(result.out, b"/bin:/usr/bin\n", result.err)

    async def test_a_bad_name_is_a_usage_error(self) -> None:
        for arg in ("1X=y", "A-B=c", "=x"):
            result = await self.harness.cli("start", "-e", arg, "--", "true")
            self.assertEqual(result.code, 2, arg)
            self.assertIn(b"invalid environment variable name", result.err)
            self.assertIn(b"see 'jobworker start --help'", result.err)

    async def test_the_environment_is_not_in_the_status(self) -> None:
        result = await self.harness.cli("start", "-e", "SECRET=xyzzy", "--", "true")
        job_id = result.out.decode().strip()
        await self.harness.cli("wait", job_id)
        shown = await self.harness.cli("status", "--json", job_id)
        self.assertNotIn(b"xyzzy", shown.out)


class EnvironmentAPITests(APITestCase):
    async def test_a_bad_name_is_invalid_argument(self) -> None:
        request = pb.StartRequest(command=[b"true"], env={"A-B": "1"})
        error = await self.error("alice", "Start", request)
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("invalid environment variable name 'A-B'", error.details())

    async def test_a_nul_in_a_value_is_invalid_argument(self) -> None:
        request = pb.StartRequest(command=[b"true"], env={"A": "x\0"})
        error = await self.error("alice", "Start", request)
        self.assertEqual(error.code(), grpc.StatusCode.INVALID_ARGUMENT)


class StdinTests(CLITestCase):
    async def test_run_i_sends_stdin_byte_for_byte(self) -> None:
        data = b"hello\x00\xff\n" + bytes(range(256)) * 800
        result = await self.harness.cli("run", "-i", "--", "cat", stdin=data)
        self.assertEqual((result.out, result.err, result.code), (data, b"", 0))

    async def test_our_eof_is_the_jobs_eof(self) -> None:
        result = await self.harness.cli("run", "-i", "--", "wc", "-c", stdin=b"x" * 5)
        self.assertEqual((result.out.strip(), result.code), (b"5", 0), result.err)
        result = await self.harness.cli(
            "run",
            "--stdin",
            "--",
            "sh",
            "-c",
            'read a; read b; echo "$b $a"',
            stdin=b"one\ntwo\n",
        )
        self.assertEqual(result.out, b"two one\n")

    async def test_start_i_sends_stdin_then_returns(self) -> None:
        result = await self.harness.cli("start", "-i", "--", "cat", stdin=b"later\n")
        self.assertEqual(result.code, 0, result.err)
        job_id = result.out.decode().strip()
        await self.harness.cli("wait", job_id)
        logs = await self.harness.cli("logs", job_id)
        self.assertEqual(logs.out, b"later\n")

    async def test_a_job_that_closes_its_stdin_early_is_no_error(self) -> None:
        result = await self.harness.cli(
            "run", "-i", "--", "head", "-c", "3", stdin=b"y" * (4 << 20)
        )
        self.assertEqual((result.out, result.err, result.code), (b"yyy", b"", 0))

    async def test_without_i_the_jobs_stdin_is_empty(self) -> None:
        result = await self.harness.cli("run", "--", "wc", "-c", stdin=b"")
        self.assertEqual((result.out.strip(), result.code), (b"0", 0))


class StdinAPITests(APITestCase):
    async def start(self, user: str, *command: bytes, stdin: bool = True) -> str:
        request = pb.StartRequest(command=list(command), stdin=stdin)
        response = await self.call(user, "Start", request)
        job_id: str = response.job.id
        return job_id

    async def write(
        self, user: str, job_id: str, *pieces: bytes
    ) -> pb.WriteInputResponse:
        messages = [pb.InputChunk(job_id=job_id)]
        messages += [pb.InputChunk(data=piece) for piece in pieces]

        def send() -> pb.WriteInputResponse:
            return self.stub(user).WriteInput(iter(messages), timeout=30)

        return await self.in_thread(send)

    async def write_error(self, user: str, job_id: str) -> grpc.RpcError:
        try:
            await self.write(user, job_id, b"x")
        except grpc.RpcError as error:
            return error
        raise AssertionError("WriteInput succeeded")

    async def test_the_job_reads_what_was_written_then_eof(self) -> None:
        job_id = await self.start("alice", b"cat")
        reply = await self.write("alice", job_id, b"ab", b"", b"cd")
        self.assertEqual((reply.bytes_written, reply.closed_by_job), (4, False))
        ended = await self.call("alice", "Wait", pb.WaitRequest(job_id=job_id))
        self.assertEqual(ended.job.exit_code, 0)
        chunks = await self.read_all("alice", job_id)
        self.assertEqual(b"".join(chunk[3] for chunk in chunks), b"abcd")

    async def test_only_the_owner_may_write(self) -> None:
        job_id = await self.start("bob", b"cat")
        self.addCleanup(self.manager.close_input, job_id)
        error = await self.write_error("carol", job_id)
        self.assertEqual(error.code(), grpc.StatusCode.NOT_FOUND)
        error = await self.write_error("alice", job_id)  # an admin
        self.assertEqual(error.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn("only the job's owner (bob)", error.details())

    async def test_a_job_without_stdin_takes_no_input(self) -> None:
        job_id = await self.start("alice", b"true", stdin=False)
        error = await self.write_error("alice", job_id)
        self.assertEqual(error.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("started without one", error.details())

    async def test_the_input_is_written_once(self) -> None:
        job_id = await self.start("alice", b"cat")
        await self.write("alice", job_id, b"once")
        error = await self.write_error("alice", job_id)
        self.assertEqual(error.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("closed", error.details())

    async def test_a_job_that_closes_its_stdin_ends_the_call(self) -> None:
        job_id = await self.start("alice", b"head", b"-c", b"1")
        pieces = [b"z" * 65536] * 200  # 12.5 MiB: more than any pipe holds
        reply = await self.write("alice", job_id, *pieces)
        self.assertTrue(reply.closed_by_job)
        self.assertLess(reply.bytes_written, 200 * 65536)

    async def test_a_job_that_does_not_read_holds_the_writer_back(self) -> None:
        job_id = await self.start("alice", b"sleep", b"1000")
        pulled: list[int] = []

        def messages() -> Any:
            yield pb.InputChunk(job_id=job_id)
            for i in range(1000):  # 64 MiB, if nothing held it back
                pulled.append(i)
                yield pb.InputChunk(data=b"w" * 65536)

        call = self.stub("alice").WriteInput.future(messages(), timeout=60)
        await self.eventually(lambda: len(pulled) > 4, "some input taken")
        stdin = self.manager._jobs[job_id].input
        assert stdin is not None
        await self.eventually(lambda: stdin._paused, "the pipe full")
        # The server took what fits the pipe and its writer's buffer, then
        # waits for the job: the rest stays with the client.
        self.assertLess(stdin.written, 1 << 20)
        self.assertFalse(call.done())
        await self.call("alice", "Stop", pb.StopRequest(job_id=job_id, grace_seconds=0))
        reply = await self.in_thread(call.result)
        self.assertTrue(reply.closed_by_job)


class IsolatedInputTests(CLITestCase):
    """-i and -e in a sandboxed job: new namespaces, private root, own uid."""

    server_options = ()

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("isolating jobs needs root")
        super().setUp()

    async def test_stdin_and_environment_reach_an_isolated_job(self) -> None:
        script = 'read line; echo "$GREETING $line"; cat'
        result = await self.harness.cli(
            "run",
            "-i",
            "-e",
            "GREETING=hi",
            "--",
            "sh",
            "-c",
            script,
            stdin=b"there\nrest\n",
        )
        self.assertEqual(
            (result.out, result.err, result.code), (b"hi there\nrest\n", b"", 0)
        )

    async def test_an_isolated_job_closing_its_stdin_is_seen_at_once(self) -> None:
        result = await self.harness.cli(
            "run", "-i", "--", "head", "-c", "2", stdin=b"q" * (8 << 20)
        )
        self.assertEqual((result.out, result.code), (b"qq", 0), result.err)
