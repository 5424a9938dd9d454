"""Fixtures: a launcher wired to the keepalived stand-in in a temp dir, and real keepalived clusters;
both torn down by PID.  The test support they use is the package `support` (tests/support/)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example time limit (hypothesis's default is 200 ms): a wall-clock threshold fails on a busy
# machine without anything being wrong (seen: a spawn test on a 2-core machine with both cores busy).
settings.register_profile("notify-launcher", deadline=None)
settings.load_profile("notify-launcher")

pytest.register_assert_rewrite("support")  # its asserts explain themselves as the tests' do

from support import marks, realka  # noqa: E402
from support.launcher import Launcher  # noqa: E402

pytest_plugins = ["support.marks"]  # the `needs` marker


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    setup = Launcher.in_dir(tmp_path)
    yield setup
    try:
        if setup.unchecked is None:
            setup.check()
    finally:
        setup.end_processes()


@pytest.fixture
def real_cluster() -> Iterator[Callable[..., realka.Cluster]]:
    """`real_cluster(count=2, **Cluster options)` checks the prerequisites in the test itself (so a
    missing one is a SKIP, or under CI=true a FAILED test, not a setup error), sets a cluster up,
    and tears every one down after the test."""
    made: list[realka.Cluster] = []

    def make(count: int = 2, **options: object) -> realka.Cluster:
        reason = realka.missing_prerequisite()
        if reason is not None:
            marks.unavailable(reason)
        cluster = realka.Cluster(count, **options)  # type: ignore[arg-type]
        made.append(cluster)
        cluster.setup()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()
