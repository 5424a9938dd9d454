"""The history file under stress: a `history` read racing a compaction, a worker killed in one, a
history file the worker cannot append to (history.py, progress.py's compaction, ledger.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from notify_launcher import history, identity
from notify_launcher.history import History
from notify_launcher.ledger import KEEP_HISTORY
from notify_launcher.progress import ProgressLog
from notify_launcher.records import EndRecord
from notify_launcher.statedir import StatePaths, sweep_temps
from support import LAUNCHER, processes
from support.launcher import Launcher

NAMES = 10


def _burst(k, start: int, count: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(start, start + count):
        assert k.write(f'INSTANCE "VI_{i % NAMES}" {"MASTER" if i % 2 else "BACKUP"} 100')


def _compactions(launcher: Launcher) -> int:
    return launcher.log_text().count("progress compacted")


@pytest.mark.parametrize("stalled", ["progress", "history"])
def test_history_read_across_a_compaction_shows_every_result(launcher: Launcher, stalled: str) -> None:
    """`history N` joins two files a compaction changes one after the other (history appended, then
    the progress file replaced with only each name's last end): read in the wrong order, a
    compaction between the reads leaves the ends it moved out of both, and the output jumps over
    them.  strace stalls `history`'s open of one file for 8 s (the window any slow `history` has,
    only longer) while a burst makes the worker compact; every seq in the range shown is there."""
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    sent = 0
    while _compactions(launcher) < 1:  # a history file exists
        _burst(k, sent, 200)
        sent += 200
        launcher.settle(sent)
    before = _compactions(launcher)
    path = str(launcher.state / stalled)
    cmd = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", path, "-e", "trace=openat",
           "-e", "inject=openat:delay_enter=8000000",
           LAUNCHER, "history", "--state-dir", str(launcher.state), "-n", "100000", "--json"]
    hist = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    launcher.wait_for(f"history to sit in its open of {stalled}",
                      lambda: any(processes.opening(p.pid, path) for p in psutil.Process(hist.pid).children()))
    while _compactions(launcher) == before:
        _burst(k, sent, 200)
        sent += 200
        launcher.settle(sent)
    out, _ = hist.communicate(timeout=60)
    seqs = [e["seq"] for e in json.loads(out)]
    missing = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
    k.stop([])
    assert not missing, f"history shows #{seqs[0]}..#{seqs[-1]} but not {len(missing)} of them: " \
                        f"#{missing[0]}..#{missing[-1]}"


@pytest.mark.parametrize("what", ["symlink", "directory"])
def test_a_history_file_that_cannot_be_appended_to_does_not_stop_the_progress_compaction(launcher: Launcher,
                                                                                        what: str) -> None:
    """The history file only serves `history N`; the progress compaction keeps `status` and `wait`
    flat and /run (RAM) small.  A history path the worker refuses (a symlink: O_NOFOLLOW, as the
    trust rule wants) or cannot append to (a directory; EIO, a full disk do the same) must not stop
    the compactions: the progress file stays small, the ends they move are left out of the history
    (one WARN naming the file while it lasts), and once the path is writable again an INFO says so
    and the history goes on."""
    k = launcher.keepalived("--linger", "600")
    k.start()
    launcher.wait_started()
    history_path = launcher.state / "history"
    if what == "symlink":
        (launcher.dir / "elsewhere").write_bytes(b"")
        history_path.symlink_to(launcher.dir / "elsewhere")
    else:
        history_path.mkdir()
    sent = 0
    for _ in range(8):
        _burst(k, sent, 150)
        sent += 150
        launcher.settle(sent)
    size = (launcher.state / "progress").stat().st_size
    text = launcher.log_text()
    # with a writable history file the progress file stays under ~2 x max(64 KiB, its compacted size)
    assert size < 256 * 1024, f"progress file {size} bytes after {sent} events; compactions: " \
        f"{text.count('progress compacted')}, failed: {text.count('cannot compact')}"
    assert text.count(f"cannot append to {history_path}") == 1, text
    if what == "symlink":
        assert (launcher.dir / "elsewhere").read_bytes() == b"", "the worker wrote through a symlink"
        history_path.unlink()
    else:
        history_path.rmdir()
    before = text.count("progress compacted")
    while launcher.log_text().count("progress compacted") == before:
        _burst(k, sent, 150)
        sent += 150
        launcher.settle(sent)
    k.stop([])
    launcher.settle(sent + 1)
    assert f"{history_path} can be written again" in launcher.log_text()
    out = subprocess.run([LAUNCHER, "history", "--state-dir", str(launcher.state), "-n", "100000", "--json"],
                         capture_output=True, text=True, check=True).stdout
    seqs = [e["seq"] for e in json.loads(out)]
    assert seqs[-1] == sent + 1 and seqs == sorted(set(seqs))


def _end(seq: int) -> EndRecord:
    key = f"INSTANCE VI_{seq % NAMES}"
    return EndRecord(op="end", seq=seq, t=1.7e9 + seq, key=key, event=f"{key} MASTER", state="MASTER",
                     result="exit 0", ok=True)


def test_a_history_trim_that_fails_does_not_stop_the_progress_compaction(tmp_path: Path) -> None:
    """A trim rewrites the history file beside it (history.PID.new); when that fails (here a
    directory in its way, as a full disk would), the compaction goes on with every end appended,
    `trouble` says so, and the next compaction trims."""
    paths = StatePaths(str(tmp_path))
    log, hist = ProgressLog(paths.progress), History(paths.history, KEEP_HISTORY)
    for seq in range(1, 1501):
        assert log.record(_end(seq)) is None
    in_the_way = Path(f"{paths.history}.{os.getpid()}.new")
    in_the_way.mkdir()
    log.compact(hist)
    assert hist.trouble is not None and hist.trouble.startswith(f"cannot trim {paths.history}"), hist.trouble
    assert [e["seq"] for e in history.read(paths.history)] == list(range(1, 1501))
    assert log.size() < 4096 and log.size() == log.baseline
    in_the_way.rmdir()
    for seq in range(1501, 1601):
        assert log.record(_end(seq)) is None
    log.compact(hist)
    assert hist.trouble is None
    assert [e["seq"] for e in history.read(paths.history)] == list(range(601, 1601))


def _history_seqs(launcher: Launcher) -> list[int]:
    out = subprocess.run([LAUNCHER, "history", "--state-dir", str(launcher.state), "-n", "100000", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return [e["seq"] for e in json.loads(out)]


@pytest.mark.parametrize("where", ["rename-history", "rename-progress"])
def test_a_worker_killed_in_a_compaction_leaves_no_temporary_file_behind(launcher: Launcher, where: str) -> None:
    """The worker is SIGKILLed (OOM killer, an administrator) at the rename that ends a history
    trim or a progress rewrite (strace attached to the worker alone, its signal injection).  What
    the compaction promised holds (`history` shows every end once, in order; the checker passes),
    and the next worker removes the temporary file (`history.PID.new`: the whole kept history,
    ~250 KB; `progress.PID.new`) from the state directory -- /run, RAM -- saying so."""
    syscall, name = where.split("-")
    k = launcher.keepalived("--linger", "600")
    k.start()
    pid = launcher.wait_standby()
    temp = launcher.state / f"{name}.{pid}.new"
    tracer = subprocess.Popen(["strace", "-qq", "-o", "/dev/null", "-p", str(pid), "-P", str(temp),
                               "-e", "trace=rename,renameat,renameat2",
                               "-e", "inject=rename,renameat,renameat2:signal=KILL:when=1"])
    launcher.wait_for("strace to attach", lambda: processes.traced(pid))
    sent = 0
    for _ in range(8):  # the kill, then a new worker's compactions and trims
        _burst(k, sent, 150)
        sent += 150
        launcher.settle(sent)
    k.stop([])
    launcher.settle(sent + 1)
    if tracer.poll() is None:
        tracer.kill()
    tracer.wait()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "not killed"
    seqs = _history_seqs(launcher)
    assert seqs == list(range(seqs[0], sent + 2))
    left = {p.name: p.stat().st_size for p in launcher.state.iterdir() if p.name.endswith(".new")}
    assert not left, f"left in the state directory after the next worker's compactions: {left}"
    assert f"{temp.name} (" in launcher.log_text()


def test_the_sweep_removes_only_the_temporary_files_of_dead_processes(tmp_path: Path) -> None:
    """A live process's NAME.PID.new may be being written (a worker whose worker.lock was removed,
    a reader writing settings.json): only a dead PID's, or a zombie's, go.  Other names stay."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    zombie = subprocess.Popen(["true"])
    try:
        while (st := identity.stat(zombie.pid)) is not None and st.state != "Z":
            time.sleep(0.01)  # until it exited (not reaped: we do not wait for it yet)
        names = {f"progress.{dead.pid}.new": b"12", f"history.{zombie.pid}.new": b"345",
                 f"settings.json.{os.getpid()}.new": b"live", "progress": b"x", "progress.new": b"x",
                 f"journal.{dead.pid}.new.keep": b"x"}
        for name, data in names.items():
            (tmp_path / name).write_bytes(data)
        (tmp_path / f"journal.{dead.pid}.new").mkdir()
        assert sweep_temps(str(tmp_path)) == {f"progress.{dead.pid}.new": 2, f"history.{zombie.pid}.new": 3}
    finally:
        zombie.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"settings.json.{os.getpid()}.new", "progress", "progress.new", f"journal.{dead.pid}.new.keep",
         f"journal.{dead.pid}.new"])
