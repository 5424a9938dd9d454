"""Nothing can stall, repeat or silently drop the queue: one test per way a fault could make it.

Real readers, workers, FIFOs and signals; faults injected for real (a poisoned journal entry, an
action that kills its worker, a removed state directory, a pid limit on fork).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from support import LAUNCHER, ROOT, VI, processes, recorder, tmpfs
from support.launcher import Launcher, forget_fifo
from support.marks import needs
from support.standin import Keepalived
from support.recorder import check_order
from notify_launcher.events import Event
from notify_launcher.journal import JournalWriter
from notify_launcher.stopping import later_sibling
from notify_launcher.turn import lock_path


def _history(launcher: Launcher) -> dict[int, dict[str, object]]:
    out = subprocess.run([LAUNCHER, "history", "--json", "-n", "1000", "--state-dir", str(launcher.state)],
                         capture_output=True, text=True, check=True).stdout
    return {rec["seq"]: rec for rec in json.loads(out)}


def _handler(launcher: Launcher, then: str) -> None:
    """Replace the recorder by one that, after its start line, does `then` (shell code)."""
    launcher.handler = recorder.install(launcher.dir / "handler2.sh", records=launcher.rec, then=then)


def test_an_event_that_cannot_be_spawned_fails_alone(launcher: Launcher) -> None:
    """A journal entry the worker cannot even spawn (a NUL inside the name: written by an older
    version, or by hand) is that event's failure alone: the workers live and the next event runs."""
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    JournalWriter(str(launcher.state / "journal")).append(Event("INSTANCE", "VI_\0bad", "MASTER", 100),
                                                          time.time(), os.getpid())
    k.write(VI.format("MASTER"))
    launcher.settle(3)
    k.stop([])
    hist = _history(launcher)
    assert hist[2]["ok"] is False and "ValueError" in str(hist[2]["result"]), hist[2]
    assert hist[3]["ok"] is True and hist[3]["event"] == VI.format("MASTER")
    assert [r.seq for r in launcher.starts()] == [1, 3]
    log = launcher.log_text()
    assert "#2 " in log and "FAILED inside the launcher (the next event runs)" in log
    assert "Traceback (most recent call last)" in log  # the traceback is in the log, line by line


def test_action_killed_by_a_realtime_signal_is_described_and_the_queue_goes_on(launcher: Launcher) -> None:
    _handler(launcher, '[ "$3" = MASTER ] && kill -40 $$')
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    k.write(VI.format("BACKUP"))
    launcher.settle(2)
    k.stop([])
    hist = _history(launcher)
    rtmin = signal.SIGRTMIN
    assert hist[1]["result"] == f"killed by SIGRTMIN+{40 - rtmin}" and hist[1]["ok"] is False, hist[1]
    assert hist[2]["result"] == "exit 0"
    assert [r.seq for r in launcher.starts()] == [1, 2]


def test_a_worker_that_keeps_dying_on_one_event_is_bounded_then_skipped(launcher: Launcher) -> None:
    """The action SIGKILLs its own worker (as an OOM kill or a segfault would end it), every time:
    with on_crash = rerun the re-runs are bounded: three workers die, then the event is skipped
    with the reason and the next event runs."""
    _handler(launcher, '[ "$3" = MASTER ] && kill -9 $PPID && sleep 5')
    ini = launcher.dir / "rerun.ini"
    ini.write_text("[launcher]\non_crash = rerun\n")
    k = launcher.keepalived("--config", str(ini))
    k.start()
    k.write(VI.format("MASTER"))
    k.write(VI.format("BACKUP"))
    launcher.settle(2, timeout=120)
    k.stop([])
    hist = _history(launcher)
    assert hist[1]["ok"] is False and hist[1]["result"] == "skipped: 3 workers died on this event", hist[1]
    assert hist[2]["result"] == "exit 0"
    starts = [r.seq for r in launcher.starts()]
    assert starts == [1, 1, 1, 2], starts
    assert "the queue goes on" in launcher.log_text()


def test_numbering_continues_above_the_progress_when_the_journal_was_removed(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    for state in ("BACKUP", "MASTER", "BACKUP"):
        k.write(VI.format(state))
    launcher.settle(3)
    k.stop([])
    launcher.settle(4)  # + the reader's STOP
    (launcher.state / "journal").unlink()
    res = subprocess.run([LAUNCHER, "send", "--state-dir", str(launcher.state), VI.format("MASTER")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "journaled as #5", res
    launcher.settle(5)
    assert [r.seq for r in launcher.starts()] == [1, 2, 3, 5]


def test_state_directory_removed_while_the_reader_runs(launcher: Launcher) -> None:
    """rm -rf of the state directory under a running reader (and a lingering worker): the reader
    makes it again (0700), journals above what it numbered before, and the event runs."""
    k = launcher.keepalived("--linger", "30")
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    shutil.rmtree(launcher.state)
    k.write(VI.format("MASTER"))
    launcher.settle(2)
    k.write(VI.format("BACKUP"))
    launcher.settle(3)
    assert launcher.state.stat().st_mode & 0o777 == 0o700
    k.stop([])
    started, problems = check_order(launcher.records())
    assert started == [1, 2, 3] and problems == 0


def test_journal_removed_while_the_reader_runs(launcher: Launcher) -> None:
    k = launcher.keepalived("--linger", "30")
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    (launcher.state / "journal").unlink()
    k.write(VI.format("MASTER"))
    launcher.settle(2)
    k.stop([])
    assert [r.seq for r in launcher.starts()] == [1, 2]


PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@needs("root and the cgroup v1 pids controller at /sys/fs/cgroup/pids",
       os.geteuid() == 0 and (PIDS_CGROUP / "cgroup.procs").exists())
def test_fork_refused_at_the_pid_limit_does_not_end_the_reader(launcher: Launcher) -> None:
    """fork() failing (EAGAIN: a pids cgroup at its limit, met when the reader replaces its killed
    standby worker) does not end the reader: it is logged, retried with back-off, and once the
    limit allows, the worker starts and the event runs."""
    group = PIDS_CGROUP / f"nl-test-{os.getpid()}-{time.time_ns()}"
    group.mkdir()
    k = launcher.keepalived()
    try:
        k.start()
        launcher.wait_started()
        standby = launcher.wait_standby()
        assert k.proc is not None
        (group / "pids.max").write_text("1\n")
        (group / "cgroup.procs").write_text(f"{k.proc.pid}\n")
        os.kill(standby, signal.SIGKILL)  # the reader must fork a new one: refused
        k.write(VI.format("MASTER"))
        launcher.wait_for("the fork failure in the log", lambda: "cannot start a worker" in launcher.log_text(), timeout=30)
        assert k.proc.poll() is None, "the reader died"
        (group / "pids.max").write_text("max\n")
        launcher.settle(1)
        assert "worker start: working again" in launcher.log_text()
        k.stop([])
        assert [r.seq for r in launcher.starts()] == [1]
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.wait_for("the test cgroup to empty", lambda: not (group / "cgroup.procs").read_text().strip(), timeout=30)
        group.rmdir()


def test_later_sibling_finds_the_next_reader_keepalived_started() -> None:
    """How a reader tells a reload from a stop: keepalived starts the same command again, from the
    same parent (the FIFO may be the very same one, so it cannot tell).  Each is started as
    keepalived starts a script, leading a process group of its own: then its starter is its parent,
    whatever process group the test itself runs in."""
    first = subprocess.Popen(["sleep", "30"], preexec_fn=os.setpgrp)
    second = subprocess.Popen(["sleep", "30"], preexec_fn=os.setpgrp)
    other = subprocess.Popen(["sleep", "31"], preexec_fn=os.setpgrp)
    try:
        assert later_sibling(first.pid) == second.pid
        assert later_sibling(second.pid) is None
        assert later_sibling(other.pid) is None
    finally:
        for p in (first, second, other):
            p.kill()
            p.wait()


def test_later_sibling_is_the_same_reader_however_it_was_started(tmp_path: Path) -> None:
    """The next reader is the one keepalived gives the same FIFO (its last argument), whatever runs
    it and whatever its options: another wrapper's code, another checkout, the console script, an
    edited script line.  A later process of another program, a reader of another FIFO, or an
    operator command, is none."""
    fifo, state = str(tmp_path / "k.fifo"), str(tmp_path / "state")
    idle = "import time\ntime.sleep(30)"  # plays the reader: only its command line counts here
    args = ["--state-dir", state, fifo]
    procs = [subprocess.Popen(argv, preexec_fn=os.setpgrp) for argv in (
        [sys.executable, "-c", idle, "notify_launcher", *args],  # the checkout wrapper's shape
        [sys.executable, "-c", idle, "a_tool", *args],  # another program given the same arguments
        [sys.executable, "-c", idle, "notify_launcher", "--state-dir", state, fifo + "2"],  # another FIFO
        [sys.executable, "-c", idle, "notify_launcher", "status", "--state-dir", state, fifo],  # a command
        ["sleep", "30", *args])]
    try:
        assert later_sibling(procs[0].pid) is None
        upgraded = subprocess.Popen([sys.executable, "-c", idle + "\n", str(tmp_path), "notify_launcher", *args],
                                    preexec_fn=os.setpgrp)  # other code, the checkout as an argument
        procs.append(upgraded)
        assert later_sibling(procs[0].pid) == upgraded.pid
        script = tmp_path / "bin" / "notify-launcher"  # the console script, run as its shebang runs it
        script.parent.mkdir()
        script.write_text(idle)
        installed = subprocess.Popen([sys.executable, str(script), *args], preexec_fn=os.setpgrp)
        procs.append(installed)
        assert later_sibling(upgraded.pid) == installed.pid
        edited = subprocess.Popen([sys.executable, "-c", idle, "notify_launcher", "--state-dir", state + "2",
                                   "--log-level", "debug", fifo], preexec_fn=os.setpgrp)  # other options
        procs.append(edited)
        assert later_sibling(installed.pid) == edited.pid
        assert later_sibling(edited.pid) is None
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.parametrize("fifo", ["new-fifo", "shared-fifo"])
def test_a_reload_that_changes_the_readers_options_is_not_a_stop(launcher: Launcher, fifo: str) -> None:
    """An operator edits notify_fifo_script's options in keepalived.conf (here --linger 1 -> 2; the
    same goes for --state-dir, --config, --log-level) and reloads; keepalived starts the new command
    from the same parent.  On a FIFO that survives the reload (an LVS site as the README recommends,
    or any FIFO made before keepalived, which 2.2.7 leaves behind at exit) the old reader gets
    SIGTERM and no EOF: it must still know the next reader as its own (red team: it looked for one
    with its own options, found none, took the SIGTERM for a stop, journaled READER reader STOP and
    stop_action ran while keepalived ran on).  With a new FIFO, EOF says reload."""
    launcher.stop_action()
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    k.script = [("2" if word == "1" and k.script[n - 1] == "--linger" else word) for n, word in enumerate(k.script)]
    k.reload(same_fifo=fifo == "shared-fifo").join()
    launcher.wait_for("the next reader", lambda: launcher.log_text().count("| reader started") >= 2, timeout=30)
    k.write(VI.format("MASTER"))
    launcher.wait_for("MASTER's action", lambda: any(r.state == "MASTER" for r in launcher.starts()))
    launcher.wait_idle()
    log = launcher.log_text()
    assert "READER reader STOP" not in log, [line for line in log.splitlines() if "READER" in line or "exiting" in line]
    assert not [r for r in launcher.starts() if r.type == "READER"], "stop_action ran while keepalived reloads"
    assert k.proc is not None
    b = k.proc.pid
    launcher.wait_for("the next reader to catch SIGTERM", lambda: processes.catches_sigterm(b))
    k.stop([VI.format("STOP")])


#: bin/notify-launcher as it was before its code changed (runpy): a reader started by an older (or newer) checkout.
OTHER_WRAPPER = """#!/bin/sh
self=$(readlink -f "$0")
top=${self%/bin/*}
python=python3
[ -x "$top/.venv/bin/python" ] && python="$top/.venv/bin/python"
PYTHONPATH="$top${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -c 'import sys
if sys.path[0] == "":
    del sys.path[0]
import runpy
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)' notify_launcher "$@"
"""


def _deploy(where: Path, wrapper: str) -> None:
    """A deploy of this checkout at `where`: its own bin/notify-launcher (`wrapper`), its package and
    .venv (links to this checkout's package and the tests' venv)."""
    (where / "bin").mkdir(parents=True)
    (where / "bin" / "notify-launcher").write_text(wrapper)
    (where / "bin" / "notify-launcher").chmod(0o755)
    (where / "notify_launcher").symlink_to(ROOT / "notify_launcher")
    (where / ".venv").symlink_to(sys.prefix)


@pytest.mark.parametrize("then", ["another deploy", "an upgraded checkout", "the console script"])
def test_a_reload_onto_a_reader_started_another_way_is_not_a_stop(launcher: Launcher, tmp_path: Path,
                                                                     then: str) -> None:
    """keepalived.conf names `current/bin/notify-launcher`; before the reload (on the same FIFO,
    docs/keepalived.md "Reload") `current` is switched to another deploy (the wrapper puts the
    deploy's path and its .venv's python into the command line), to an upgraded one (the wrapper's
    code changed too), or keepalived.conf now names the console script.  The old reader must see
    the next reader and leave it the FIFO (READER RELOAD), not take the SIGTERM for a stop."""
    current = tmp_path / "current"
    _deploy(tmp_path / "v1", (ROOT / "bin" / "notify-launcher").read_text())
    _deploy(tmp_path / "v2", OTHER_WRAPPER if then == "an upgraded checkout" else (ROOT / "bin" / "notify-launcher").read_text())
    current.symlink_to(tmp_path / "v1")
    launcher.stop_action()
    k = launcher.keepalived()
    k.script = [str(current / "bin" / "notify-launcher"), *k.script[1:]]
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    (tmp_path / "next").symlink_to(tmp_path / "v2")
    os.replace(tmp_path / "next", current)
    if then == "the console script":
        k.script = [str(Path(sys.executable).parent / "notify-launcher"), *k.script[1:]]  # pip's
    k.reload(same_fifo=True).join()
    k.write(VI.format("MASTER"))
    launcher.wait_for("MASTER's action", lambda: any(r.state == "MASTER" for r in launcher.starts()))
    launcher.wait_idle()
    log = launcher.log_text()
    assert "READER reader RELOAD" in log and "READER reader STOP" not in log, \
        [line for line in log.splitlines() if "READER" in line or "SIGTERM" in line]
    assert not [r for r in launcher.starts() if r.type == "READER"], "stop_action ran while keepalived reloads"


def test_sigterm_without_eof_while_keepalived_started_the_next_reader_is_a_reload(launcher: Launcher) -> None:
    """Two reloads close together: the first reload's reader gets SIGTERM but no EOF (the FIFO is
    shared, or its EOF came before it opened it).  The next reader, started by the same parent,
    says it is a reload: the reader journals READER RELOAD, not STOP, and no stop_action runs while
    keepalived goes on."""
    marker = launcher.dir / "stopped"
    _handler(launcher, "")
    stop_action = launcher.dir / "stop.sh"
    stop_action.write_text(f"#!/bin/sh\ntouch {marker}\n")
    stop_action.chmod(0o755)
    launcher.stop_action(stop_action)
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    assert k.proc is not None
    first = k.proc
    nxt = subprocess.Popen(k.script + [k.fifo], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, process_group=0)  # what keepalived's reload starts
    try:
        launcher.wait_for("the next reader", lambda: launcher.log_text().count("reader started") == 2, timeout=30)
        os.kill(first.pid, signal.SIGTERM)  # no EOF: keepalived still holds the FIFO open
        first.wait(timeout=30)
        launcher.wait_for("the first reader's exit event", lambda: "READER reader" in launcher.log_text(), timeout=30)
        launcher.wait_idle()
        log = launcher.log_text()
        assert "READER reader RELOAD" in log and "READER reader STOP" not in log, log[-2000:]
        assert "keepalived started the next reader" in log
        assert not marker.exists(), "stop_action ran while keepalived keeps running"
    finally:
        nxt.kill()
        nxt.wait()
        if first.poll() is None:
            first.kill()
            first.wait()
        os.close(k.fd)
        os.unlink(k.fifo)


@needs("strace (Debian's strace: scripts/setup installs it)", shutil.which("strace") is not None)
def test_a_reload_while_the_old_reader_holds_lines_it_has_not_journaled_keeps_their_order(launcher: Launcher) -> None:
    """The busy-CI defect: during a reload on a shared FIFO the old reader had read lines and lost the
    CPU before journaling them; the next reader read later lines and journaled them first.  Here
    the old reader's read of X1..X3 is held in the kernel for 0.5 s (strace delays its return), the
    reload comes, and Y1..Y3 follow at once: the next reader must wait for the old one to journal
    what it holds (turn.py).  (Whether it finds the old one still holding depends on how long its
    own start took: the log line that says it waited is not asked for.)"""
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    assert k.proc is not None
    old = k.proc.pid
    tracer = processes.hold_first_read(old, 500_000)
    try:
        xs, ys = [f'INSTANCE "X{i}" MASTER 100' for i in range(3)], [f'INSTANCE "Y{i}" MASTER 100' for i in range(3)]
        for line in xs:
            assert k.write(line)
        launcher.wait_for("the old reader's read of X", lambda: k.unread() == 0)
        k.reload(same_fifo=True)
        for line in ys:
            assert k.write(line)
        launcher.wait_for("every line journaled", lambda: launcher.last_seq() >= 8, timeout=30)
        launcher.wait_idle()
    finally:
        tracer.wait(timeout=60)
    log = launcher.log_text()
    ran = [r.args[1] for r in sorted(launcher.starts(), key=lambda r: r.seq or 0) if r.args[0] == "INSTANCE"]
    assert ran == ["VI_1"] + [line.split('"')[1] for line in xs + ys], log[-3000:]
    assert "READER reader RELOAD" in log and "READER reader STOP" not in log


def test_a_reader_before_us_that_never_leaves_is_waited_for_a_bounded_time_then_read_beside(
        launcher: Launcher) -> None:
    """A reader started before ours that holds its ticket and does not leave (keepalived started two
    readers on one FIFO, or one is stopped; here a process holding the oldest ticket there can be)
    holds ours back HANDOVER_WAIT at most: then it says who and why in the log, and reads (nothing
    lost, nothing stuck)."""
    lock = lock_path(str(launcher.fifo), str(launcher.state))
    os.makedirs(os.path.dirname(lock), mode=0o700, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
                               "fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0)\n"
                               "print('held', flush=True)\n"
                               "time.sleep(3600)", lock], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        k = launcher.keepalived()
        k.start()
        k.write(VI.format("BACKUP"))
        launcher.settle(1)
        log = launcher.log_text()
        assert f"the earlier reader pid {holder.pid} still reads {launcher.fifo} after" in log, log[-3000:]
        assert "reading beside it" in log
        k.stop([VI.format("STOP")])
    finally:
        holder.kill()
        holder.wait()


def test_a_lingering_worker_follows_a_changed_log_file(launcher: Launcher) -> None:
    k = launcher.keepalived("--linger", "30")
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    k.stop([])
    launcher.settle(2)
    worker = (launcher.state / "worker.pid").read_text().split()[0]
    first_log = launcher.log
    launcher.log = launcher.dir / "second.log"
    k = launcher.keepalived("--linger", "30", "--log-level", "DEBUG")
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(3)
    k.stop([])
    assert (launcher.state / "worker.pid").read_text().split()[0] == worker, "the worker did not linger"
    second = launcher.log_text()
    assert f"worker[{worker}] INFO  #3 INSTANCE \"VI_1\" MASTER 100 | action started" in second, second
    assert f"worker[{worker}] DEBUG" in second or "worker[" in second
    assert "logging to" in first_log.read_text()


def test_a_lingering_worker_reaps_what_an_action_left_behind(launcher: Launcher) -> None:
    """An action's background child, re-parented to the worker (a subreaper), exits while the
    worker lingers: it must not stay a zombie until the next event."""
    done = launcher.dir / "bg-done"
    _handler(launcher, f'setsid sh -c "sleep 0.3; touch {done}" &')
    k = launcher.keepalived("--linger", "30")
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    worker = int((launcher.state / "worker.pid").read_text().split()[0])
    launcher.wait_for("the background child to finish", done.exists, timeout=30)

    def zombies() -> list[str]:
        try:
            kids = Path(f"/proc/{worker}/task/{worker}/children").read_text().split()
        except FileNotFoundError:
            return []
        out = []
        for kid in kids:
            try:
                if Path(f"/proc/{kid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    out.append(kid)
            except FileNotFoundError:
                pass
        return out

    launcher.wait_for("the worker to reap its orphan", lambda: not zombies(), timeout=10)
    assert Path(f"/proc/{worker}").exists(), "the worker left; it should linger"
    k.stop([])


@needs("root (it mounts a tiny tmpfs)", os.geteuid() == 0)
def test_reader_started_on_a_full_state_file_system_keeps_reading(launcher: Launcher) -> None:
    """A full state file system when the reader starts does not end it: it logs it, reads the FIFO,
    holds the events in order and journals them when space comes back."""
    filler = launcher.state / "filler"
    with tmpfs.mounted(launcher.state, "64k", before_unmount=launcher.end_processes):
        tmpfs.fill_file_system(filler)
        for name in ("a", "b", "c"):  # and no inode left for a small file either
            try:
                (launcher.state / name).write_bytes(b"x" * 512)
            except OSError:
                break
        k = launcher.keepalived()
        k.start()
        for state in ("BACKUP", "MASTER"):
            k.write(VI.format(state))
        launcher.wait_for("the full disk in the log",
                          lambda: "cannot" in launcher.log_text() and "No space left on device" in launcher.log_text(),
                          timeout=30)
        assert k.proc is not None and k.proc.poll() is None, "the reader died"
        filler.unlink()
        launcher.settle(2)
        k.stop([])
        assert [r.state for r in launcher.starts()] == ["BACKUP", "MASTER"]


@contextmanager
def _respelled_fifo(launcher: Launcher, tmp_path: Path, *options: str) -> Iterator[Keepalived]:
    """A stand-in on /var/run/NAME.fifo, started and #1 settled; the block reloads it as /run/NAME.fifo
    (an edited keepalived.conf: the same FIFO, another spelling).  Cleans up what is outside the
    test's directory."""
    name = f"nl-respelled-{tmp_path.name}.fifo"
    k = Keepalived(launcher.argv(*options), f"/var/run/{name}")
    launcher.standins.append(k)
    try:
        k.start()
        k.write(VI.format("BACKUP"))
        launcher.settle(1)
        k.fifo = f"/run/{name}"
        yield k
    finally:
        launcher.end_processes()
        if os.path.exists(k.fifo):
            os.unlink(k.fifo)
        forget_fifo(k.fifo)


@needs("/var/run a link to /run", os.path.realpath("/var/run") == "/run")
def test_a_reload_that_respells_the_fifo_path_is_not_a_stop(launcher: Launcher, tmp_path: Path) -> None:
    """keepalived.conf said `notify_fifo /var/run/NAME.fifo` (/var/run links to /run); an operator
    edits it to `/run/NAME.fifo` and reloads.  The FIFO survives the reload (made before keepalived,
    as the README tells LVS sites, or left by an earlier run): the same inode, no EOF to the old
    reader.  The next reader is the same reader under another spelling (red team: the paths compared
    as bytes, READER reader STOP, stop_action while keepalived ran on)."""
    launcher.stop_action()
    with _respelled_fifo(launcher, tmp_path) as k:
        k.reload(same_fifo=True).join()
        launcher.wait_for("the next reader", lambda: launcher.log_text().count("| reader started") >= 2, timeout=30)
        k.write(VI.format("MASTER"))
        launcher.wait_for("MASTER's action", lambda: any(r.state == "MASTER" for r in launcher.starts()))
        launcher.wait_idle()
        log = launcher.log_text()
        assert "READER reader STOP" not in log and not [r for r in launcher.starts() if r.type == "READER"], \
            [line for line in log.splitlines() if "READER" in line or "exiting" in line]
        assert k.proc is not None
        b = k.proc.pid
        launcher.wait_for("the next reader to catch SIGTERM", lambda: processes.catches_sigterm(b))
        k.stop([VI.format("STOP")])


@needs("strace", shutil.which("strace") is not None)
@needs("/var/run a link to /run", os.path.realpath("/var/run") == "/run")
def test_a_reload_that_respells_the_fifo_path_keeps_keepalived_order(launcher: Launcher, tmp_path: Path) -> None:
    """The same reload while the old reader holds lines it read and has not journaled (strace: its read
    returns 0.85 s late, a reader that lost the CPU), and keepalived goes on writing: the two readers'
    tickets (turn.py) must be one FIFO's, so the new reader waits for the old one (red team: keyed by
    the path's spelling, the new reader read beside the old one and journaled later lines first)."""
    with _respelled_fifo(launcher, tmp_path, "--handler", "") as k:
        assert k.proc is not None
        tracer = processes.hold_first_read(k.proc.pid, 850_000)
        try:
            for i in range(3):
                assert k.write(f'INSTANCE "X{i}" MASTER 100')
            launcher.wait_for("the old reader's read of X", lambda: k.unread() == 0)
            killer = k.reload(same_fifo=True)
            b = k.proc.pid
            launcher.wait_for("the next reader catches SIGTERM", lambda: processes.catches_sigterm(b), timeout=30)
            for i in range(3):
                assert k.write(f'INSTANCE "Y{i}" MASTER 100')
            killer.join()
        finally:
            tracer.wait(timeout=60)
        launcher.wait_idle()
        launcher.check(stops=0)
