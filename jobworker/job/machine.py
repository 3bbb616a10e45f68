"""The state machine of one job: running, stopping, exited or killed.

Built with Automat's `TypeMachineBuilder` in the shape of Twisted's
`ClientService` machine: `JobInputs` lists the inputs, `JobCore` holds the
clock and the two ways of signalling the job, and `JobMachine` (bound at
module level so `automat-visualize` can draw it) makes a machine for a core.
An input that is not valid in the current state raises
`automat.NoTransition` before anything runs.

Between "the job's process has exited" and "its final status is recorded"
the job is `Ending` while the owner cleans up (cgroup, work dir); it is
reported as running (or stopping, if a stop was asked for) until then.
The stop escalation timer is created when a stop first arrives, brought
forward by a later stop with a sooner deadline, and cancelled in one place:
when the process exits. The machine fires no Deferreds (a
callback run inside a transition could not use the machine); waiting for
the end is the job's (jobworker.job.job).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from automat import TypeMachineBuilder, pep614
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from jobworker.model import JobState


class JobInputs(Protocol):
    """What can happen to a job."""

    def stop(self, grace: float) -> None:
        """Ask the job to stop: TERM now, KILL after `grace` seconds.

        Stopping a stopping job shares the first stop's escalation, brought
        forward if this stop's grace ends sooner (so a server shutdown is
        not held up by a user's long grace); stopping an ending or ended one
        does nothing.
        """

    def grace_expired(self) -> None:
        """The stop grace period ran out (the escalation timer fired)."""

    def process_exited(self) -> None:
        """The job's main process has exited; clean-up starts."""

    def exited(self, exit_code: int) -> None:
        """Clean-up is done; the command exited with `exit_code`."""

    def killed(self, signal: int) -> None:
        """Clean-up is done; the command was killed by `signal`."""

    def lost(self) -> None:
        """Clean-up is done; how the command ended cannot be known (its
        live-restore helper died without an exit status)."""

    def state(self) -> JobState:
        """The state to report in the job's status."""


@dataclass
class JobCore:
    """What the machine works with: a clock and the job's signalling."""

    clock: IReactorTime
    """A reactor or a `Clock`."""
    terminate: Callable[[], None]
    """Ask the job to end (SIGTERM to its process group)."""
    kill: Callable[[], None]
    """Kill every process of the job now."""

    stop_requested: bool = False
    exit_code: int | None = None
    signal: int | None = None
    escalation: IDelayedCall | None = None


def _build() -> Callable[[JobCore], JobInputs]:
    builder = TypeMachineBuilder(JobInputs, JobCore)
    running = builder.state("Running")
    stopping = builder.state("Stopping")
    ending = builder.state("Ending")
    exited = builder.state("Exited")
    killed = builder.state("Killed")
    lost = builder.state("Lost")

    running.upon(JobInputs.state).loop().returns(JobState.RUNNING)
    stopping.upon(JobInputs.state).loop().returns(JobState.STOPPING)
    exited.upon(JobInputs.state).loop().returns(JobState.EXITED)
    killed.upon(JobInputs.state).loop().returns(JobState.KILLED)
    lost.upon(JobInputs.state).loop().returns(JobState.LOST)
    ending.upon(JobInputs.lost).to(lost).returns(None)
    running.upon(JobInputs.process_exited).to(ending).returns(None)

    @pep614(ending.upon(JobInputs.state).loop())
    def ending_state(inputs: JobInputs, core: JobCore) -> JobState:
        return JobState.STOPPING if core.stop_requested else JobState.RUNNING

    for later in (ending, exited, killed, lost):
        later.upon(JobInputs.stop).loop().returns(None)

    @pep614(running.upon(JobInputs.stop).to(stopping))
    def start_stopping(inputs: JobInputs, core: JobCore, grace: float) -> None:
        core.stop_requested = True
        core.escalation = core.clock.callLater(grace, inputs.grace_expired)
        core.terminate()

    @pep614(stopping.upon(JobInputs.stop).loop())
    def hasten(inputs: JobInputs, core: JobCore, grace: float) -> None:
        pending = core.escalation
        if pending is not None and core.clock.seconds() + grace < pending.getTime():
            pending.reset(grace)

    @pep614(stopping.upon(JobInputs.grace_expired).loop())
    def escalate(inputs: JobInputs, core: JobCore) -> None:
        core.escalation = None
        core.kill()

    @pep614(stopping.upon(JobInputs.process_exited).to(ending))
    def cancel_escalation(inputs: JobInputs, core: JobCore) -> None:
        if core.escalation is not None:
            core.escalation.cancel()
            core.escalation = None

    @pep614(ending.upon(JobInputs.exited).to(exited))
    def record_exit(inputs: JobInputs, core: JobCore, exit_code: int) -> None:
        core.exit_code = exit_code

    @pep614(ending.upon(JobInputs.killed).to(killed))
    def record_kill(inputs: JobInputs, core: JobCore, signal: int) -> None:
        core.signal = signal

    return builder.build()


JobMachine = _build()
