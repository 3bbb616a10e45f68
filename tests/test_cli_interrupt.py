"""Ctrl-C (SIGINT) while the CLI waits: it stops waiting, says so, exits 130."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import protocol
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests.cliutil import JOBWORKER, CLITestCase, started_job

reactor: Any = _reactor


class _CLI(protocol.ProcessProtocol):
    """The CLI as a child process we can interrupt; `ended` fires at its exit."""

    def __init__(self, interrupt_on: bytes | None = None) -> None:
        self.ended: Deferred[tuple[bytes, bytes, int]] = Deferred()
        self.out, self.err, self.interrupt_on = b"", b"", interrupt_on

    def interrupt(self) -> None:
        transport: Any = self.transport
        transport.signalProcess("INT")

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self.interrupt_on is not None and self.interrupt_on in self.out:
            self.interrupt_on = None
            self.interrupt()

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback((self.out, self.err, -1 if code is None else code))


class InterruptTests(CLITestCase):
    def spawn(self, cli: _CLI, *args: str) -> None:
        reactor.spawnProcess(cli, JOBWORKER, [JOBWORKER, *args], env=self.harness.env())

    async def test_ctrl_c_during_run_stops_following_and_says_how_to_stop(
        self,
    ) -> None:
        cli = _CLI(interrupt_on=b"ready")
        self.spawn(cli, "run", "--", "sh", "-c", "echo ready; exec sleep 600")
        out, err, code = await cli.ended
        self.assertEqual((out, code), (b"ready\n", 130))
        match = re.search(rb"jobworker stop (\S+)\)", err)
        self.assertIsNotNone(match, err)
        assert match is not None
        job_id = match.group(1).decode()
        self.assertEqual((await self.status(job_id))["state"], "running")
        stopped = await self.harness.cli("stop", "--grace", "0", job_id)
        self.assertEqual(stopped.code, 0, stopped.err)

    async def test_ctrl_c_during_stop_stops_waiting(self) -> None:
        script = "trap '' TERM; echo ready; exec sleep 600"
        job_id = await started_job(self.harness, "sh", "-c", script)
        await self.wait_for_output(job_id)
        cli = _CLI()
        self.spawn(cli, "stop", "--grace", "3", job_id)
        for _ in range(200):
            if (await self.status(job_id))["stop_requested"]:
                break
        cli.interrupt()
        _, err, code = await cli.ended
        self.assertEqual(code, 130)
        self.assertIn(f"jobworker status {job_id}".encode(), err)

    async def test_ctrl_c_during_logs_follow_exits_130(self) -> None:
        job_id = await started_job(
            self.harness, "sh", "-c", "echo ready; exec sleep 600"
        )
        cli = _CLI(interrupt_on=b"ready")
        self.spawn(cli, "logs", "-f", job_id)
        out, err, code = await cli.ended
        self.assertEqual((out, err, code), (b"ready\n", b"", 130))
        await self.harness.cli("stop", "--grace", "0", job_id)
