"""The one place that falls back to Twisted's global reactor.

Components take their reactor as a parameter (`reactor=None`), so that a
test can pass a fake or a `Clock`. `or_global` gives them the installed
reactor when none was passed; it imports it on the call, so importing
jobworker never installs a reactor (twistd installs its own first).
"""

from __future__ import annotations


def or_global(reactor: object | None) -> object:
    """`reactor`, or the installed global reactor when it is None.

    Adapt the result to the interface used, as in
    `clock = IReactorTime(or_global(reactor))`: the adaptation types it, and
    refuses at once an object that does not provide the interface.
    """
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as installed  # noqa: PLC0415

    return installed
