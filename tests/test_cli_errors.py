"""The CLI's error paths: usage errors, connection and certificate problems."""

from __future__ import annotations

import os
import socket

import grpc
from twisted.trial import unittest

from jobworker.cli.client import ClientConfig, describe
from tests.cliutil import CLITestCase


def _one_line(err: bytes) -> bool:
    return err.startswith(b"jobworker: ") and err.count(b"\n") == 1


class UsageTests(CLITestCase):
    async def test_usage_errors_exit_2_with_one_line(self) -> None:
        for args in (
            [],
            ["frobnicate"],
            ["start"],
            ["start", "--"],
            ["run", "--memory", "12Q", "--", "true"],
            ["run", "--cpu", "-1", "--", "true"],
            ["status"],
            ["stop", "--grace", "soon", "x"],
            ["--server", "nohostport", "list"],
        ):
            result = await self.harness.cli(*args)
            self.assertEqual(result.code, 2, args)
            self.assertTrue(_one_line(result.err), (args, result.err))
            self.assertNotIn(b"Traceback", result.err)

    async def test_missing_tls_settings_are_usage_errors(self) -> None:
        result = await self.harness.cli("list", env={"PATH": os.defpath})
        self.assertEqual(result.code, 2)
        self.assertIn(b"JOBWORKER_CA", result.err)

    async def test_unreadable_tls_file_is_named(self) -> None:
        env = self.harness.env(JOBWORKER_CERT="/nonexistent/alice.pem")
        result = await self.harness.cli("list", env=env)
        self.assertEqual(result.code, 2)
        self.assertIn(b"/nonexistent/alice.pem", result.err)

    async def test_flags_win_over_the_environment(self) -> None:
        env = self.harness.env(JOBWORKER_SERVER="127.0.0.1:1")
        result = await self.harness.cli(
            "--server", self.harness.address, "list", env=env
        )
        self.assertEqual(result.code, 0, result.err)


class ConnectionTests(CLITestCase):
    async def test_server_down_says_cannot_connect(self) -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{unused.getsockname()[1]}"
        result = await self.harness.cli(
            "list", env=self.harness.env(JOBWORKER_SERVER=address)
        )
        self.assertEqual(result.code, 1)
        self.assertEqual(
            result.err,
            f"jobworker: cannot connect to {address}: connection refused"
            " (is the server running?)\n".encode(),
        )

    async def test_silent_server_times_out(self) -> None:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            address = f"127.0.0.1:{silent.getsockname()[1]}"
            env = self.harness.env(JOBWORKER_SERVER=address)
            result = await self.harness.cli("--connect-timeout", "0.5", "list", env=env)
        self.assertEqual(result.code, 1)
        self.assertIn(b"no answer within 0.5s", result.err)

    async def test_wrong_ca_is_an_untrusted_server_certificate(self) -> None:
        env = self.harness.env(JOBWORKER_CA=os.path.join(self.pki, "client-ca.pem"))
        result = await self.harness.cli("list", env=env)
        self.assertEqual(result.code, 1)
        self.assertTrue(_one_line(result.err), result.err)
        self.assertIn(b"untrusted server certificate", result.err)

    async def test_name_not_in_the_server_certificate_is_a_mismatch(self) -> None:
        name = socket.gethostname()
        try:
            loopback = socket.gethostbyname(name) == "127.0.0.1"
        except OSError:
            loopback = False
        if not loopback or name == "localhost":
            raise unittest.SkipTest(f"host name {name!r} does not resolve to 127.0.0.1")
        env = self.harness.env(JOBWORKER_SERVER=f"{name}:{self.harness.port}")
        result = await self.harness.cli("list", env=env)
        self.assertEqual(result.code, 1)
        self.assertIn(b"name mismatch", result.err)

    async def test_client_certificate_of_another_ca_is_refused(self) -> None:
        for name in ("alien", "expired"):
            env = self.harness.env(
                JOBWORKER_CERT=os.path.join(self.pki, f"{name}.pem"),
                JOBWORKER_KEY=os.path.join(self.pki, f"{name}.key"),
            )
            result = await self.harness.cli("list", env=env)
            self.assertEqual(result.code, 1)
            self.assertIn(b"refused the client certificate", result.err, name)

    async def test_certificate_without_a_role_is_permission_denied(self) -> None:
        result = await self.harness.cli("list", user="noou")
        self.assertEqual(result.code, 1)
        self.assertTrue(result.err.startswith(b"jobworker: permission denied"))

    async def test_key_of_another_certificate_is_named(self) -> None:
        env = self.harness.env(JOBWORKER_KEY=os.path.join(self.pki, "bob.key"))
        result = await self.harness.cli("list", env=env)
        self.assertEqual(result.code, 1)
        self.assertIn(b"is it the key of this certificate?", result.err)


class CommandLineTests(CLITestCase):
    async def test_global_flags_work_after_the_command(self) -> None:
        env = self.harness.env(JOBWORKER_SERVER="127.0.0.1:1")
        address = self.harness.address
        result = await self.harness.cli("list", "--server", address, env=env)
        self.assertEqual(result.code, 0, result.err)
        result = await self.harness.cli(
            "run", "--server", address, "--connect-timeout", "5", "--", "echo", "hi"
        )
        self.assertEqual((result.out, result.code), (b"hi\n", 0), result.err)

    async def test_flags_after_the_double_dash_belong_to_the_job(self) -> None:
        result = await self.harness.cli("run", "--", "echo", "--server", "x")
        self.assertEqual((result.out, result.code), (b"--server x\n", 0))

    async def test_version_prints_the_version(self) -> None:
        result = await self.harness.cli("--version")
        self.assertEqual(result.code, 0, result.err)
        self.assertRegex(result.out.decode(), r"^jobworker \d+\.\d+\.\d+\n$")

    async def test_usage_errors_name_the_command_and_its_help(self) -> None:
        for args, said in (
            (["start", "--json"], b"unrecognized arguments: --json"),
            (["run"], b"no command given: jobworker run [LIMITS] -- PROG"),
            (["run", "--"], b"no command given: jobworker run"),
            (["status"], b"the following arguments are required: JOB_ID"),
            (["list", "extra"], b"unrecognized arguments: extra"),
        ):
            result = await self.harness.cli(*args)
            self.assertEqual(result.code, 2, args)
            self.assertTrue(_one_line(result.err), (args, result.err))
            self.assertIn(said, result.err)
            hint = f"(see 'jobworker {args[0]} --help')\n".encode()
            self.assertTrue(result.err.endswith(hint), (args, result.err))

    async def test_unreadable_file_from_the_environment_names_the_variable(
        self,
    ) -> None:
        env = self.harness.env(JOBWORKER_CA="certs/server-ca.pem")
        elsewhere = os.path.abspath(self.mktemp())
        os.mkdir(elsewhere)
        result = await self.harness.cli("list", env=env, cwd=elsewhere)
        self.assertEqual(result.code, 2)
        self.assertEqual(
            result.err,
            b"jobworker: cannot read JOBWORKER_CA=certs/server-ca.pem (relative to "
            + elsewhere.encode()
            + b"): No such file or directory\n",
        )

    async def test_unreadable_file_from_a_flag_names_the_flag(self) -> None:
        result = await self.harness.cli("list", "--key", "/nonexistent/k.key")
        self.assertEqual(
            result.err,
            b"jobworker: cannot read --key file /nonexistent/k.key:"
            b" No such file or directory\n",
        )

    async def test_bad_server_from_the_environment_names_the_variable(self) -> None:
        env = self.harness.env(JOBWORKER_SERVER="nohostport")
        result = await self.harness.cli("list", env=env)
        self.assertEqual(result.code, 2)
        self.assertTrue(
            result.err.startswith(b"jobworker: JOBWORKER_SERVER=nohostport: "),
            result.err,
        )


class _Refusal(grpc.RpcError):
    """An RpcError as grpc raises it: a code and the server's details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class DescribeTests(unittest.TestCase):
    config = ClientConfig("127.0.0.1:7443", "ca.pem", "cert.pem", "key.pem")

    def test_a_cap_is_said_in_the_servers_words_not_as_busy(self) -> None:
        cap = "bob holds 10G of output, the most one user may keep"
        error = _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, cap)
        self.assertEqual(describe(error, self.config), cap)

    def test_a_busy_server_is_said_once(self) -> None:
        busy = "server busy: bob has 16 Start/Stop/Remove calls in progress"
        error = _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, busy)
        self.assertEqual(describe(error, self.config), busy)
