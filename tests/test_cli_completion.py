"""Shell completion: the generated bash script, run by a real bash."""

from __future__ import annotations

import shutil

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.cliutil import BIN, CLITestCase, started_job

BASH = shutil.which("bash")


class BashCompletionTests(CLITestCase):
    def setUp(self) -> None:
        if BASH is None:
            raise unittest.SkipTest("bash is not installed")
        super().setUp()

    async def complete(
        self, *words: str, user: str = "alice", **environ: str
    ) -> list[str]:
        """What bash offers for the last of `words` (after `jobworker`)."""
        line = " ".join(f"'{word}'" for word in ("jobworker", *words))
        script = (
            "source <(jobworker completion bash)\n"
            f"COMP_WORDS=({line}); COMP_CWORD={len(words)}\n"
            '_jobworker; printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        env = self.harness.env(user, PATH=f"{BIN}:/usr/bin:/bin", **environ)
        assert BASH is not None
        out: bytes
        err: bytes
        out, err, code = await getProcessOutputAndValue(BASH, ["-c", script], env=env)
        self.assertEqual((code, err), (0, b""))
        return out.decode().split()

    async def test_commands_are_completed(self) -> None:
        self.assertEqual(await self.complete("st"), ["start", "status", "stop"])

    async def test_options_of_the_command_are_completed(self) -> None:
        self.assertEqual(await self.complete("list", "--s"), ["--server", "--state"])
        self.assertEqual(await self.complete("list", "--state", "r"), ["running"])
        self.assertEqual(await self.complete("completion", "z"), ["zsh"])

    async def test_job_ids_come_from_the_callers_list(self) -> None:
        mine = await started_job(self.harness, "true", user="bob")
        await started_job(self.harness, "true", user="carol")
        self.assertEqual(await self.complete("status", "", user="bob"), [mine])
        self.assertEqual(await self.complete("wait", mine[:3], user="bob"), [mine])

    async def test_connection_options_on_the_line_reach_the_id_lookup(
        self,
    ) -> None:
        job_id = await started_job(self.harness, "true")
        address = self.harness.address
        # The environment names no server: only the one on the line works.
        nowhere = {"JOBWORKER_SERVER": "127.0.0.1:1"}
        self.assertEqual(await self.complete("logs", "", **nowhere), [])
        offered = await self.complete("--server", address, "logs", "", **nowhere)
        self.assertEqual(offered, [job_id])

    async def test_nothing_is_offered_after_the_double_dash(self) -> None:
        self.assertEqual(await self.complete("run", "--", "ec"), [])

    async def test_zsh_script_wraps_the_bash_function(self) -> None:
        result = await self.harness.cli("completion", "zsh")
        self.assertEqual(result.code, 0, result.err)
        self.assertIn(b"bashcompinit", result.out)
        self.assertIn(b"complete -F _jobworker jobworker", result.out)
