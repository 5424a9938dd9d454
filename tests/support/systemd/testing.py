"""What the pytest modules on the harness share (tests/test_systemd.py, tests/test_matrix.py): the
prerequisites (skip elsewhere, fail under CI=true: support.marks) and the cell's cache, built with
its progress printed past pytest's capture as TIMING lines (the first run takes minutes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support.marks import unavailable
from support.systemd import harness
from support.systemd.cells import Cell
from support.systemd.harness import Result
from support.systemd.rootfs import Unavailable


def timing_printer(request: pytest.FixtureRequest, what: str) -> Callable[[str], None]:
    """print(f"TIMING {what}: {msg}") shown without -s, from fixtures of any scope."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def say(msg: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"\nTIMING {what}: {msg}", flush=True)

    return say


def prepare(request: pytest.FixtureRequest, cell: Cell, source: Path, what: str) -> Callable[[str], None]:
    """Make sure `cell` can run here (else skip, or fail under CI=true, with the reason) and its
    cache is built; returns the TIMING printer."""
    problem = harness.missing_prerequisites()
    if problem:
        unavailable(f"systemd harness: {problem}")
    say = timing_printer(request, what)
    t0 = time.monotonic()
    try:
        root = harness.ensure_cell(cell, source, say)
    except Unavailable as exc:
        unavailable(f"systemd harness: {exc}")
    say(f"{cell} ready after {time.monotonic() - t0:.1f} s ({root.parent.name}); installing {source}")
    return say


def run(scenario: str, cell: Cell, source: Path, env: dict[str, str] | None = None) -> Result:
    """One boot of `scenario` in `cell` (`env`: more variables for scenario.sh); a prerequisite
    found missing only now skips/fails as above."""
    try:
        return harness.run_scenario(scenario, source, cell=cell, env=env)
    except Unavailable as exc:
        unavailable(f"systemd harness: {exc}")
