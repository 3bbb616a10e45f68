"""The job's environment: the clean one, and the caller's variables on top."""

from __future__ import annotations

from twisted.trial import unittest

from jobworker.errors import InvalidRequest
from jobworker.job.environment import JOB_PATH, MAX_ENV, check_env, job_env


class JobEnvTests(unittest.TestCase):
    def test_a_job_gets_only_the_clean_environment(self) -> None:
        self.assertEqual(
            job_env("/w"), {"PATH": JOB_PATH, "HOME": "/w", "LANG": "C.UTF-8"}
        )

    def test_the_callers_variables_go_on_top_and_may_replace_path(self) -> None:
        env = job_env("/w", {"FOO": "1", "PATH": "/opt/bin", "_x9": ""})
        self.assertEqual(env["FOO"], "1")
        self.assertEqual(env["PATH"], "/opt/bin")
        self.assertEqual(env["_x9"], "")
        self.assertEqual(env["HOME"], "/w")

    def test_bad_names_are_refused(self) -> None:
        for name in ("", "1A", "A-B", "A=B", "A B", "É", "A\0"):
            with self.assertRaises(InvalidRequest, msg=repr(name)) as caught:
                check_env({name: "x"})
            self.assertIn("invalid environment variable name", str(caught.exception))

    def test_a_nul_in_a_value_is_refused(self) -> None:
        with self.assertRaises(InvalidRequest) as caught:
            check_env({"A": "x\0y"})
        self.assertIn("NUL", str(caught.exception))

    def test_the_environment_is_bounded(self) -> None:
        check_env({"A": "x" * 100_000, "B": "y" * 100_000})
        with self.assertRaises(InvalidRequest) as caught:
            check_env({f"V{i}": "x" * 100_000 for i in range(MAX_ENV // 100_000 + 1)})
        self.assertIn("environment is longer", str(caught.exception))
        with self.assertRaises(InvalidRequest):
            check_env({"A": "x" * (128 * 1024)})
