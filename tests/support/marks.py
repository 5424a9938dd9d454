"""The one way a test says what it needs: skipped with the reason elsewhere, FAILED under CI=true
(where a missing prerequisite is a broken CI machine, not a reason to test less).

    @needs("root (mounts a small tmpfs)", os.geteuid() == 0)
    def test_...

    pytestmark = needs("logrotate (scripts/setup installs it)", shutil.which("logrotate") is not None)

A prerequisite found out only while the test runs (a network namespace that cannot be made, a
Debian mirror out of reach) goes through `unavailable(reason)`, with the same outcome.

A plugin (tests/conftest.py loads it): outside CI the test is skipped before its fixtures are set
up, as by a skip mark; under CI=true it fails (FAILED, not an error) when it would start.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def unavailable(reason: str) -> NoReturn:
    """A prerequisite is missing: skip with `reason`, or under CI=true fail with it."""
    if in_ci():
        pytest.fail(f"CI=true, so a missing prerequisite fails instead of skipping: {reason}", pytrace=False)
    pytest.skip(reason)


def needs(what: str, available: bool) -> pytest.MarkDecorator:
    """Mark a test (or, as `pytestmark`, a module) as needing `what`; `available`: whether it is here."""
    return pytest.mark.needs(what=what, available=available)


def _missing(item: pytest.Item) -> list[str]:
    return [m.kwargs["what"] for m in item.iter_markers("needs") if not m.kwargs["available"]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(what, available): skip when not available, fail under CI=true "
                                       "(support.marks.needs)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Outside CI: a skip mark on every test that needs what is missing (reported at the test)."""
    if in_ci():
        return
    for item in items:
        missing = _missing(item)
        if missing:
            item.add_marker(pytest.mark.skip(reason="needs " + "; and ".join(missing)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Under CI=true: the test fails where it would start."""
    missing = _missing(item)
    if missing:
        unavailable("needs " + "; and ".join(missing))
