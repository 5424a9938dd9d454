"""Running as root, the launcher refuses config files and actions others can change (keepalived's rule)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import Launcher
from notify_launcher.security import insecure_reason

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="needs root (ownership and root-only rules)")


@pytest.fixture(autouse=True)
def _must_be_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("CI=true: these tests must run as root")


def test_safe_paths_pass(tmp_path: Path) -> None:
    safe = tmp_path / "act.sh"
    safe.write_text("#!/bin/sh\n")
    safe.chmod(0o755)
    assert insecure_reason(str(safe)) is None
    assert insecure_reason("/bin/sh") is None


def test_world_writable_file_group_writable_dir_foreign_owner_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "act.sh"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o777)
    assert insecure_reason(str(f)) == f"{f} is writable by group and others"
    f.chmod(0o755)
    d = tmp_path / "dir"
    d.mkdir()
    d.chmod(0o775)
    (d / "x").write_text("")
    assert insecure_reason(str(d / "x")) == f"{d} is writable by its group"
    d.chmod(0o755)
    os.chown(d / "x", 1000, 1000)
    assert insecure_reason(str(d / "x")) == f"{d / 'x'} belongs to uid 1000, not root"


def test_sticky_directory_on_the_way_is_fine_but_a_symlink_target_is_checked(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    f = sticky / "act.sh"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o755)
    assert insecure_reason(str(f)) is None
    bad = tmp_path / "bad.sh"
    bad.write_text("")
    bad.chmod(0o666)
    link = tmp_path / "link.sh"
    link.symlink_to(bad)
    assert insecure_reason(str(link)) == f"{bad} is writable by group and others"


def test_reader_refuses_to_start_with_an_insecure_handler_or_config(launcher: Launcher) -> None:
    launcher.handler.chmod(0o777)
    os.mkfifo(launcher.fifo)
    res = subprocess.run(launcher.argv(str(launcher.fifo)), capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert f"handler {launcher.handler} is not safe to run as root: {launcher.handler} is writable by group and others" in res.stderr
    launcher.handler.chmod(0o755)
    ini = launcher.dir / "x.ini"
    ini.write_text("[launcher]\n")
    ini.chmod(0o646)
    res = subprocess.run(launcher.argv("--config", str(ini), str(launcher.fifo)), capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2
    assert f"config file {ini} is not safe for root: {ini} is writable by group and others" in res.stderr
    assert "is not safe" in launcher.log_text()


def test_state_dir_symlink_or_foreign_owner_is_refused(launcher: Launcher) -> None:
    real = launcher.dir / "real-state"
    real.mkdir()
    launcher.state.symlink_to(real)
    os.mkfifo(launcher.fifo)
    res = subprocess.run(launcher.argv(str(launcher.fifo)), capture_output=True, text=True, timeout=30)
    assert res.returncode == 3 and f"state directory {launcher.state} is a symlink; refusing it" in res.stderr
    launcher.state.unlink()
    launcher.state.mkdir()
    os.chown(launcher.state, 1234, 1234)
    res = subprocess.run(launcher.argv(str(launcher.fifo)), capture_output=True, text=True, timeout=30)
    assert res.returncode == 3 and f"state directory {launcher.state} belongs to uid 1234" in res.stderr


def test_file_modes_under_keepalived_umask(launcher: Launcher) -> None:
    k = launcher.keepalived()  # the stand-in starts the reader with umask 0177, as keepalived does
    k.start()
    k.write('INSTANCE "VI_1" MASTER 100')
    launcher.settle(1)
    k.stop([])
    launcher.settle(2)
    assert launcher.state.stat().st_mode & 0o777 == 0o700
    for name in ("journal", "progress", "worker.lock", "standby.lock", "settings.json"):
        assert (launcher.state / name).stat().st_mode & 0o777 == 0o600, name
    assert launcher.log.stat().st_mode & 0o777 == 0o640
