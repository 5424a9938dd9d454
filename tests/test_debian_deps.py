"""The launcher on the dependency versions the .deb meets: Debian 12's python3-filelock 3.9,
python3-daemon 2.3.2 and python3-psutil 5.9.4, and Debian 13's 3.18, 3.1.2 and 7.0 -- taken from
PyPI into a venv of this machine's python3 (cached beside the systemd tests' root file systems),
so the code paths those versions need run on every CI run, not only in the matrix's containers.

filelock 3.9 takes no `mode=`: before locks.py every worker died at its first line, and nothing
said so anywhere (a worker's stderr is /dev/null).  A worker that cannot start must log why: the
second test starts one whose venv lacks psutil, as a half-installed system would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support import ROOT, marks
from support.launcher import Launcher
from support.recorder import check_order
from support.standin import Keepalived
from support.systemd.rootfs import cache_dir

DEBIAN12 = {"filelock": "3.9.0", "python-daemon": "2.3.2", "psutil": "5.9.4"}
DEBIAN13 = {"filelock": "3.18.0", "python-daemon": "3.1.2", "psutil": "7.0.0"}
PYTHON = "/usr/bin/python3"  # the distribution's Python, as the .deb uses it
VI = 'INSTANCE "VI_1" {} 100'

pytestmark = marks.needs(f"{PYTHON} with the venv module (scripts/setup installs python3-venv)",
                         subprocess.run([PYTHON, "-c", "import ensurepip, venv"], capture_output=True).returncode == 0)


def _venv(name: str, packages: dict[str, str]) -> Path:
    """A venv of PYTHON holding exactly `packages` (name -> version), built once and kept in the test
    cache (when writable: as root) under a name that says what it holds."""
    pins = [f"{p}=={v}" for p, v in sorted(packages.items())]
    base = cache_dir() if os.access(cache_dir().parent, os.W_OK) else Path(f"/tmp/notify-launcher-test-{os.getuid()}")
    final = base / f"venv-{name}-{'-'.join(pins)}".replace("==", "_")
    if (final / "ready").exists():
        return final
    build = final.with_name(final.name + f".build{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([PYTHON, "-m", "venv", str(build)], check=True, capture_output=True)
        res = subprocess.run([str(build / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                              *pins], capture_output=True, text=True)
        if res.returncode != 0:
            marks.unavailable(f"cannot install {' '.join(pins)} from PyPI into a venv: {res.stderr.strip()[-500:]}")
        (build / "ready").write_text(json.dumps(pins) + "\n")
        try:
            build.rename(final)
        except OSError:  # another run made it meanwhile
            pass
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return final


def _keepalived(launcher: Launcher, venv: Path) -> Keepalived:
    """The stand-in running this checkout's launcher on `venv`'s Python and packages only."""
    return Keepalived(["env", f"PYTHONPATH={ROOT}", str(venv / "bin" / "python"), "-m", "notify_launcher",
                       *launcher.argv()[1:]], str(launcher.fifo))


@pytest.mark.parametrize("release, versions", [("debian12", DEBIAN12), ("debian13", DEBIAN13)])
def test_runs_on_debian_versions_of_its_dependencies(launcher: Launcher, release: str,
                                                     versions: dict[str, str]) -> None:
    venv = _venv(release, versions)
    probe = ("import importlib.metadata as m, json; "
             "print(json.dumps({p: m.version(p) for p in ('filelock', 'python-daemon', 'psutil')}))")
    found = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(found.stdout) == versions
    k = _keepalived(launcher, venv)
    k.start()
    launcher.sleep_on("MASTER", 1)
    for state in ("BACKUP", "MASTER"):
        assert k.write(VI.format(state))
    launcher.wait_for("the MASTER action to start", lambda: len(launcher.starts()) == 2)
    report = k.stop([VI.format("STOP")])
    assert not report.killed, "keepalived had to SIGKILL the reader"
    launcher.settle(3)
    started, problems = check_order(launcher.records())
    assert started == [1, 2, 3] and problems == 0
    assert [r.args[2] for r in launcher.starts()] == ["BACKUP", "MASTER", "STOP"]
    log = launcher.log_text()
    assert "worker failed" not in log and re.search(r"worker\[\d+\] INFO  #- - \| worker started", log), log
    for name in ("worker.lock", "standby.lock"):  # filelock 3.9 cannot be told a mode: locks.py makes them
        assert (launcher.state / name).stat().st_mode & 0o777 == 0o600, name


def test_a_worker_that_cannot_start_says_why_in_the_log(launcher: Launcher) -> None:
    venv = _venv("no-psutil", {p: v for p, v in DEBIAN12.items() if p != "psutil"})
    k = _keepalived(launcher, venv)
    k.start()
    assert k.write(VI.format("MASTER"))
    launcher.wait_for("the worker's failure in the log", lambda: "worker failed" in launcher.log_text())
    k.stop([])
    log = launcher.log_text()
    assert re.search(r"worker\[\d+\] ERROR #- - \| worker failed: ModuleNotFoundError: No module named 'psutil'",
                     log), log
    assert launcher.starts() == []
