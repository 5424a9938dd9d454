"""The launcher on the dependency versions the .deb meets: Debian 12's python3-filelock 3.9,
python3-daemon 2.3.2 and python3-psutil 5.9.4, and Debian 13's 3.18, 3.1.2 and 7.0 -- taken from
PyPI into a venv of this machine's python3 (cached beside the systemd tests' root file systems),
so the code paths those versions need run on every CI run, not only in the matrix's containers.

filelock 3.9 takes no `mode=`: before locks.py every worker died at its first line, and nothing
said so anywhere (a worker's stderr is /dev/null).  A worker that cannot start must log why: the
second test starts one whose venv lacks python-daemon (what a worker imports first), as a
half-installed system would.

python-daemon 2.3.2 keeps a set of every fd number below the hard RLIMIT_NOFILE (524,288 under
systemd: ~40 MB in a worker that stands by for days; process.trim_fd_set): the worker's size must
not follow that limit, the worker must still close every fd, and the actions must still get the
limits keepalived gave the reader.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from support import ROOT, VI, marks, recorder
from support.launcher import Launcher
from support.recorder import check_order
from support.standin import Keepalived
from support.systemd.rootfs import cache_dir

DEBIAN12 = {"filelock": "3.9.0", "python-daemon": "2.3.2", "psutil": "5.9.4"}
DEBIAN13 = {"filelock": "3.18.0", "python-daemon": "3.1.2", "psutil": "7.0.0"}
PYTHON = "/usr/bin/python3"  # the distribution's Python, as the .deb uses it
HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # as high as a test here can set it

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


def _keepalived(launcher: Launcher, venv: Path, *wrapper: str) -> Keepalived:
    """The stand-in running this checkout's launcher on `venv`'s Python and packages only, through
    `wrapper` (a command that execs its arguments)."""
    standin = Keepalived([*wrapper, "env", f"PYTHONPATH={ROOT}", str(venv / "bin" / "python"), "-m", "notify_launcher",
                          *launcher.argv()[1:]], str(launcher.fifo))
    launcher.standins.append(standin)  # what it wrote and its stops are checked at the end (support.invariants)
    return standin


def _nofile(soft: int, hard: int) -> list[str]:
    """A wrapper giving the reader this RLIMIT_NOFILE, as keepalived's unit gives keepalived one."""
    return ["prlimit", f"--nofile={soft}:{hard}"]


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
    venv = _venv("no-daemon", {p: v for p, v in DEBIAN12.items() if p != "python-daemon"})
    launcher.unchecked = "no worker can start: its event never runs, on purpose"
    k = _keepalived(launcher, venv)
    k.start()
    assert k.write(VI.format("MASTER"))
    launcher.wait_for("the worker's failure in the log", lambda: "worker failed" in launcher.log_text())
    k.stop([])
    log = launcher.log_text()
    assert re.search(r"worker\[\d+\] ERROR #- - \| worker failed: ModuleNotFoundError: No module named 'daemon'",
                     log), log
    assert launcher.starts() == []


def _idle_worker_rss(directory: Path, venv: Path, hard: int) -> int:
    """The resident size of a daemon-mode worker on `venv` whose reader's hard fd limit is `hard`,
    idle after one event."""
    directory.mkdir()
    launcher = Launcher.in_dir(directory)
    launcher.extra_args += ["--detach", "daemon"]
    try:
        k = _keepalived(launcher, venv, *_nofile(1024, hard))
        k.start()
        assert k.write(VI.format("MASTER"))
        launcher.settle(1)
        rss = int(psutil.Process(launcher.wait_standby()).memory_info().rss)
        k.stop([VI.format("STOP")])
        launcher.check()
        return rss
    finally:
        launcher.end_processes()


@marks.needs(f"a hard RLIMIT_NOFILE of at least 16384 (it is {HARD})", HARD >= 16384)
def test_a_worker_on_python_daemon_2_3_2_does_not_grow_with_the_hard_fd_limit(tmp_path: Path) -> None:
    """Before process.trim_fd_set the worker was ~2.6 MB bigger at 20,000 than at 1,024 (~140 bytes
    per fd number: the set, and what open() sorted out of it); after, within +-0.2 MB.  The bound,
    32 bytes per fd number, is under a quarter of the former."""
    venv = _venv("debian12", DEBIAN12)
    rss = {hard: _idle_worker_rss(tmp_path / str(hard), venv, hard) for hard in (1024, HARD)}
    assert rss[HARD] - rss[1024] < (HARD - 1024) * 32, f"worker RSS by hard limit: {rss}"


@pytest.mark.parametrize("release", ["newest", "debian12"])
def test_a_worker_keeps_the_readers_fd_limits_but_none_of_its_fds(launcher: Launcher, release: str) -> None:
    """The actions get the limits keepalived gave the reader; a reader's fd far above its soft limit
    (process.trim_fd_set must not cut the fds python-daemon closes down to that) never reaches the
    worker."""
    venv = Path(sys.prefix) if release == "newest" else _venv("debian12", DEBIAN12)
    recorder.install(launcher.handler, launcher.rec, launcher.dir / recorder.SLEEPS,
                     then='printf \'%s\\n\' "nofile ${NL_SEQ:--} $(ulimit -Sn) $(ulimit -Hn)" >> "$rec"')
    launcher.extra_args += ["--detach", "daemon"]
    limits = (1000, HARD - 1)  # neither a default nor the test's own: only the reader can pass them on
    secret = launcher.dir / "reader-only"
    secret.write_text("")
    hold_secret = ["bash", "-c", f'exec {HARD - 2}<"$0" && exec "$@"', str(secret)]  # then prlimit: fd above soft
    k = _keepalived(launcher, venv, *hold_secret, *_nofile(*limits))
    k.start()
    launcher.wait_started()
    assert k.proc is not None
    assert psutil.Process(k.proc.pid).rlimit(psutil.RLIMIT_NOFILE) == limits
    assert os.readlink(f"/proc/{k.proc.pid}/fd/{HARD - 2}") == str(secret)
    assert k.write(VI.format("MASTER"))
    launcher.settle(1)
    worker = launcher.wait_standby()
    assert str(secret) not in [p.path for p in psutil.Process(worker).open_files()]
    k.stop([VI.format("STOP")])
    launcher.settle(2)
    seen = [(r.seq, tuple(map(int, r.args))) for r in launcher.records() if r.kind == "nofile"]
    assert seen == [(1, limits), (2, limits)], launcher.log_text()[-3000:]
