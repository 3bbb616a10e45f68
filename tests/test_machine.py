"""Tests for jobworker.job.machine: states and the TERM, grace, KILL escalation."""

from __future__ import annotations

from automat import NoTransition
from twisted.internet.task import Clock
from twisted.trial import unittest

from jobworker.job.machine import JobCore, JobInputs, JobMachine
from jobworker.model import JobState


class JobMachineTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.signals: list[str] = []
        self.core = JobCore(
            self.clock,
            terminate=lambda: self.signals.append("TERM"),
            kill=lambda: self.signals.append("KILL"),
        )
        self.machine: JobInputs = JobMachine(self.core)

    def test_new_job_is_running(self) -> None:
        self.assertEqual(self.machine.state(), JobState.RUNNING)
        self.assertFalse(self.core.stop_requested)

    def test_stop_sends_term_then_kill_after_the_grace(self) -> None:
        self.machine.stop(10.0)
        self.assertEqual(self.signals, ["TERM"])
        self.assertEqual(self.machine.state(), JobState.STOPPING)
        self.clock.advance(9.9)
        self.assertEqual(self.signals, ["TERM"])
        self.clock.advance(0.1)
        self.assertEqual(self.signals, ["TERM", "KILL"])
        self.machine.process_exited()
        self.machine.killed(9)
        self.assertEqual(self.machine.state(), JobState.KILLED)
        self.assertEqual(self.core.signal, 9)

    def test_exit_within_the_grace_cancels_the_kill(self) -> None:
        self.machine.stop(10.0)
        self.clock.advance(1)
        self.machine.process_exited()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.signals, ["TERM"])
        self.machine.killed(15)

    def test_concurrent_stops_share_one_escalation(self) -> None:
        self.machine.stop(1.0)
        self.machine.stop(10.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.signals, ["TERM"])
        self.clock.advance(1.0)
        self.assertEqual(self.signals, ["TERM", "KILL"])
        self.clock.advance(9.0)
        self.assertEqual(self.signals, ["TERM", "KILL"])
        self.machine.process_exited()
        self.machine.killed(9)

    def test_later_stop_with_a_sooner_deadline_brings_the_kill_forward(self) -> None:
        self.machine.stop(3600.0)
        self.clock.advance(5)
        self.machine.stop(0.5)  # e.g. the server shutting down
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.4)
        self.assertEqual(self.signals, ["TERM"])
        self.clock.advance(0.1)
        self.assertEqual(self.signals, ["TERM", "KILL"])
        self.machine.stop(0)
        self.clock.advance(3600)
        self.assertEqual(self.signals, ["TERM", "KILL"])

    def test_zero_grace_kills_on_the_next_tick(self) -> None:
        self.machine.stop(0)
        self.clock.advance(0)
        self.assertEqual(self.signals, ["TERM", "KILL"])

    def test_job_that_exits_by_itself_is_exited(self) -> None:
        self.machine.process_exited()
        self.assertEqual(self.machine.state(), JobState.RUNNING)
        self.machine.exited(3)
        self.assertEqual(self.machine.state(), JobState.EXITED)
        self.assertEqual(self.core.exit_code, 3)
        self.assertFalse(self.core.stop_requested)

    def test_ending_job_reports_stopping_when_a_stop_was_asked(self) -> None:
        self.machine.stop(5)
        self.machine.process_exited()
        self.assertEqual(self.machine.state(), JobState.STOPPING)

    def test_stop_while_ending_waits_without_signalling(self) -> None:
        self.machine.process_exited()
        self.machine.stop(5)
        self.assertEqual(self.signals, [])
        self.machine.exited(0)
        self.assertFalse(self.core.stop_requested)

    def test_stopping_an_ended_job_is_a_no_op(self) -> None:
        self.machine.process_exited()
        self.machine.exited(0)
        self.machine.stop(5)
        self.assertEqual(self.signals, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_final_status_never_changes(self) -> None:
        self.machine.process_exited()
        self.machine.exited(0)
        self.assertRaises(NoTransition, self.machine.killed, 9)
        self.assertRaises(NoTransition, self.machine.exited, 1)
        self.assertRaises(NoTransition, self.machine.process_exited)
        self.assertEqual(self.machine.state(), JobState.EXITED)
        self.assertEqual(self.core.exit_code, 0)
        self.assertIsNone(self.core.signal)

    def test_invalid_inputs_raise_no_transition(self) -> None:
        self.assertRaises(NoTransition, self.machine.grace_expired)
        self.assertRaises(NoTransition, self.machine.exited, 0)
        self.assertRaises(NoTransition, self.machine.killed, 9)
        self.assertEqual(self.signals, [])
