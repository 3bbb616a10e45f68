"""Client-supplied values are cut and escaped before a message or a log shows them."""

from __future__ import annotations

from typing import cast

from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.trial import unittest

from jobworker.job.events import command_for_log
from jobworker.logbursts import Bursts
from jobworker.untrusted import SHOWN_CHARS, shown


class ShownTests(unittest.TestCase):
    def test_a_short_printable_value_is_shown_as_it_is(self) -> None:
        self.assertEqual(shown("alice"), "alice")
        self.assertEqual(shown("a" * SHOWN_CHARS), "a" * SHOWN_CHARS)

    def test_a_long_value_is_cut_with_an_ellipsis_and_its_length(self) -> None:
        text = shown("x" * (4 << 20))
        self.assertEqual(text, "x" * SHOWN_CHARS + f"… ({4 << 20} chars)")
        self.assertEqual(shown(b"y" * 1000, 10), "y" * 10 + "… (1000 bytes)")

    def test_non_printable_characters_are_escaped(self) -> None:
        self.assertEqual(shown("a\nb\x1b[31m\u2028"), "a\\x0ab\\x1b[31m\\u2028")
        self.assertEqual(shown(b"\xff\xfeok"), "\\xff\\xfeok")
        self.assertEqual(shown("é".encode() * 3), "ééé")

    def test_escapes_count_towards_the_cut(self) -> None:
        text = shown("\n" * 1000, 20)
        self.assertEqual(text, "\\x0a" * 5 + "… (1000 chars)")

    def test_a_head_says_what_it_is_the_head_of(self) -> None:
        self.assertEqual(shown("ab", head_of="3 arguments"), "ab… (3 arguments)")


class CommandTextTests(unittest.TestCase):
    def test_a_short_command_is_shell_quoted_whole(self) -> None:
        self.assertEqual(command_for_log([b"sh", b"-c", b"echo hi"]), "sh -c 'echo hi'")

    def test_a_huge_argv_is_cut_and_says_how_large_it_was(self) -> None:
        argv = [b"echo", b"z" * (128 << 10)] + [b"a"] * 1000
        text = command_for_log(argv)
        self.assertLess(len(text), SHOWN_CHARS + 50)
        self.assertTrue(text.startswith("echo zzz"), text)
        self.assertTrue(
            text.endswith(f"… (1002 arguments, {(128 << 10) + 1004} bytes)")
        )


class BurstsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.now = 0.0
        self.lines: list[str] = []
        log = Logger(observer=cast(ILogObserver, self.observe))
        self.bursts = Bursts(log, "refusals", burst=3, window=10, clock=self.clock)

    def clock(self) -> float:
        return self.now

    def observe(self, event: LogEvent) -> None:
        self.lines.append(formatEvent(event))

    def test_past_a_burst_lines_are_counted_then_summarised_once(self) -> None:
        admitted = [self.bursts.admit("bob", f"refusal {n}") for n in range(40)]
        self.assertEqual(admitted, [True] * 3 + [False] * 37)
        self.assertEqual(self.lines, [])
        self.now = 10.0
        self.assertTrue(self.bursts.admit("bob", "a new window"))
        self.assertEqual(
            self.lines,
            [
                "bob: 37 more refusals within 10 s not logged one by one;"
                " the last: refusal 39"
            ],
        )

    def test_one_callers_burst_does_not_silence_another(self) -> None:
        for _ in range(10):
            self.bursts.admit("bob", "flood")
        self.assertTrue(self.bursts.admit("alice", "one refusal"))

    def test_flush_summarises_what_is_pending_and_forgets_quiet_windows(
        self,
    ) -> None:
        self.bursts.admit("carol", "once")
        for _ in range(5):
            self.bursts.admit("bob", "flood")
        self.bursts.flush()
        self.assertEqual(len(self.lines), 1)
        self.assertIn("bob: 2 more refusals", self.lines[0])
        self.assertEqual(self.bursts._windows, {})
