"""The server's end of a live-restore helper's control protocol, on a fake transport."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from jobworker.job.process.link import HelperLink


class Recorder:
    """A `LinkEvents` that lists what it heard."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, object]] = []

    def log_grew(self, size: int) -> None:
        self.heard.append(("grew", size))

    def log_truncated(self, why: str) -> None:
        self.heard.append(("truncated", why))

    def helper_ended(self, wait_status: int) -> None:
        self.heard.append(("ended", wait_status))

    def link_lost(self) -> None:
        self.heard.append(("lost", None))


class HelperLinkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.events = Recorder()
        self.link = HelperLink(self.events, helper_pid=42)
        self.transport = StringTransport()
        self.link.makeConnection(self.transport)

    def test_messages_after_the_greeting_reach_the_job(self) -> None:
        self.link.dataReceived(
            b"hello 1 42\nsize 0\nsize 130\ntruncated output-cap\nended 1280\n"
        )
        self.assertEqual(
            self.events.heard,
            [("grew", 0), ("grew", 130), ("truncated", "output-cap"), ("ended", 1280)],
        )
        self.assertFalse(self.transport.disconnecting)

    def test_a_line_split_across_reads_is_one_message(self) -> None:
        self.link.dataReceived(b"hello 1 42\nsi")
        self.link.dataReceived(b"ze 77\n")
        self.assertEqual(self.events.heard, [("grew", 77)])

    def test_another_protocol_version_is_refused(self) -> None:
        self.link.dataReceived(b"hello 2 42\nsize 10\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.events.heard, [])

    def test_no_greeting_is_refused(self) -> None:
        self.link.dataReceived(b"size 10\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.events.heard, [])

    def test_nonsense_disconnects(self) -> None:
        self.link.dataReceived(b"hello 1 42\nsize many\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.events.heard, [])

    def test_an_overlong_line_disconnects(self) -> None:
        self.link.dataReceived(b"hello 1 42\n" + b"x" * 5000)
        self.assertTrue(self.transport.disconnecting)

    def test_commands_are_lines(self) -> None:
        self.link.stop()
        self.link.kill()
        self.link.drop("user-output-quota")
        self.assertEqual(
            self.transport.value(), b"stop\nkill\ndrop user-output-quota\n"
        )

    def test_a_lost_connection_is_the_jobs_news(self) -> None:
        self.link.connectionLost()
        self.assertEqual(self.events.heard, [("lost", None)])
