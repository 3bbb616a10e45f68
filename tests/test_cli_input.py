"""What a job is given by the CLI: environment variables (`-e`) and stdin (`-i`)."""

from __future__ import annotations

import grpc

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
