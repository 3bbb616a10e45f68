"""Tests for jobworker.isolation.seccomp: compiling the job filter.

What the filter refuses, in a real job: tests.test_sandbox.
"""

from __future__ import annotations

import ctypes.util

from twisted.trial import unittest

from jobworker.errors import IsolationUnavailable
from jobworker.isolation import seccomp


class CompileTests(unittest.TestCase):
    def test_the_filter_is_a_bpf_program_with_every_rule(self) -> None:
        compiled = seccomp.compile_filter()
        self.assertEqual(len(compiled.program) % 8, 0)  # struct sock_filter
        self.assertGreater(len(compiled.program), 8 * 100)
        self.assertEqual(compiled.unknown, ())

    def test_a_missing_libseccomp_says_what_to_install(self) -> None:
        self.patch(ctypes.util, "find_library", lambda name: "libnot-there-jw.so.0")
        self.patch(seccomp, "_SONAME", "libnot-there-jw.so.0")
        error = self.assertRaises(IsolationUnavailable, seccomp.compile_filter)
        self.assertIn("libseccomp2", str(error))
        self.assertIn("--no-seccomp", str(error))

    def test_an_unknown_architecture_is_refused(self) -> None:
        error = self.assertRaises(IsolationUnavailable, seccomp.compile_filter, "mips")
        self.assertIn("--no-seccomp", str(error))
