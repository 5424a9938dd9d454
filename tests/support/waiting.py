"""`wait_for`: poll a condition on the system's state until it holds.

The one wait of the tests: a test waits on state (a record, a log line, a pid gone), never a fixed
time.  The timeout only turns a hang into a failure, and the failure names what was awaited and shows
`diagnostics()` (a log tail), so a slow machine is told apart from a wrong result.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(what: str, cond: Callable[[], object], timeout: float = 60,
             diagnostics: Callable[[], str] = lambda: "", poll: float = 0.01) -> None:
    """Poll `cond` every `poll` seconds until it is true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{diagnostics()}")
        time.sleep(poll)
