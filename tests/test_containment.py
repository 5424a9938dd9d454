"""Containment and the worker's clocks, with real processes: whatever an action does (setsid, fork
while being killed), a timeout and a recovering worker end every process it started before the
next action runs; a wall-clock step or a stopped worker never turns into a wrong decision.

The containment tests run twice: actions in cgroups (where cgroup v2 is writable) and found by the
mark, the subreaper and the session (NOTIFY_LAUNCHER_NO_CGROUPS=yes).  The fixture's invariants
check (support.invariants) flags any overlap of two actions' trees and any tree left alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from notify_launcher import containment
from notify_launcher.actions import RELEASED
from notify_launcher.containment import NO_CGROUPS, Containment
from notify_launcher.identity import ProcessId
from notify_launcher.progress import replay
from support import LAUNCHER, VI, processes, recorder
from support.launcher import Launcher
from support.marks import needs
from support.waiting import wait_for

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
CGROUPS = containment.own_cgroup() is not None and os.geteuid() == 0


@pytest.fixture(params=["cgroup", "scan"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """How the worker contains actions: in cgroups, or by scanning (the environment the stand-in
    gives the reader, and so its workers)."""
    if request.param == "cgroup" and not CGROUPS:
        pytest.skip("no writable cgroup v2 hierarchy (or not root)")
    if request.param == "scan":
        monkeypatch.setenv(NO_CGROUPS, "yes")
    yield request.param


def _worker_pid(launcher: Launcher) -> int:
    return int((launcher.state / "worker.pid").read_text().split()[0])


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if processes.running(p)]


def _results(launcher: Launcher) -> dict[int, str]:
    return {e["seq"]: e["result"] for e in replay(str(launcher.state / "progress"), keep_ends=100).ends}


def test_a_recovering_worker_ends_the_setsid_child_of_the_dead_workers_action(launcher: Launcher, way: str) -> None:
    """The worker is SIGKILLed while its action's real work runs in a child that called setsid:
    the next worker ends that child before it runs the event again (no overlap: the recorder's tree
    lock, inherited by the child, would say so)."""
    child = launcher.dir / "child"
    launcher.handler = recorder.install(launcher.dir / "work.sh", records=launcher.rec, then=f"""
if [ "$3" = MASTER ] && [ ! -e {child} ]; then
    setsid sleep 300 & echo $! > {child}
    sleep 300
fi""")
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    launcher.wait_for("the setsid'd child", lambda: child.exists() and child.read_text().strip())
    orphan = int(child.read_text())
    dead = _worker_pid(launcher)
    os.kill(dead, signal.SIGKILL)
    k.write(VI.format("BACKUP"))  # the next event brings a new worker, which recovers #1 first
    launcher.settle(2)
    k.stop([])
    assert not _alive([orphan]), "the dead worker's action's setsid'd child survived its recovery"
    assert [(r.kind, r.seq) for r in launcher.records()] == [("start", 1), ("start", 1), ("end", 1),
                                                              ("start", 2), ("end", 2)]
    assert f"worker pid {dead} died while this event's action" in launcher.log_text()


def test_after_a_timeout_nothing_the_action_forked_while_being_killed_survives(launcher: Launcher, way: str) -> None:
    """An action that ignores SIGTERM and forks setsid'd children as fast as it can, also while it
    is being killed: when its end is recorded, every one of them is gone."""
    pids = launcher.dir / "pids"
    launcher.handler = recorder.install(launcher.dir / "forker.sh", records=launcher.rec, then=f"""
if [ "$3" = MASTER ]; then
    trap "" TERM
    n=0
    while [ $n -lt 20000 ]; do setsid sleep 300 & echo $! >> {pids}; n=$((n + 1)); done
    wait
fi""")
    k = launcher.keepalived("--timeout", "1", "--config", str(_ini(launcher, "kill_grace = 0.3")))
    k.start()
    k.write(VI.format("MASTER"))
    launcher.wait_for("#1's end", lambda: 1 in _results(launcher), timeout=120)
    spawned = [int(p) for p in pids.read_text().split()]
    survivors = _alive(spawned)  # at once: the worker must have ended them before recording the end
    k.write(VI.format("BACKUP"))
    launcher.settle(2)
    k.stop([])
    assert not survivors, f"{len(survivors)} of {len(spawned)} forked processes survived the timeout"
    assert _results(launcher)[1].startswith("timed out")
    assert len(spawned) > 10


#: Started by the action: a process whose main thread exits (a raw exit(2), as a daemon's main()
#: calling pthread_exit) while another thread runs on; its pid's stat says "Z" (the main thread's
#: state), yet it lives, in the action's session, with its mark and the recorder's tree lock.
_MAIN_THREAD_EXITS = ("import ctypes, os, threading, time; print(os.getpid(), flush=True); "
                      "threading.Thread(target=time.sleep, args=(300,)).start(); ctypes.CDLL(None).syscall(60, 0)")


def test_a_timeout_ends_a_process_whose_main_thread_exited(launcher: Launcher, way: str) -> None:
    """The timed-out action's child whose main thread exited (its pid a zombie thread-group leader)
    is ended with the action, not taken for dead: the next action does not start beside it."""
    pids = launcher.dir / "pids"
    launcher.handler = recorder.install(launcher.dir / "tree.sh", records=launcher.rec, then=f"""
if [ "$3" = MASTER ]; then
    {sys.executable} -c '{_MAIN_THREAD_EXITS}' >> {pids} &
    sleep 300
fi""")
    k = launcher.keepalived("--config", str(_ini(launcher, "timeout = 1", "kill_grace = 0.2")))
    k.start()
    k.write(VI.format("MASTER"))
    launcher.wait_for("#1's end", lambda: 1 in _results(launcher), timeout=60)
    child = int(pids.read_text().split()[0])
    survived = processes.running(child)  # at once: ended before the end was recorded
    if survived:  # ended by the test (through a pidfd: its pid may name another process once it is gone)
        handle = os.pidfd_open(child)
        signal.pidfd_send_signal(handle, signal.SIGKILL)
        os.close(handle)
    k.write(VI.format("BACKUP"))
    launcher.settle(2)
    k.stop([])
    assert not survived, f"#1 timed out, its child {child} (main thread exited) still runs"
    assert _results(launcher)[1].startswith("timed out")


def _ini(launcher: Launcher, *lines: str) -> Path:
    ini = launcher.dir / "launcher.ini"
    ini.write_text("[launcher]\n" + "\n".join(lines) + "\n")
    return ini


def _status(launcher: Launcher) -> str:
    return subprocess.run([LAUNCHER, "status", "--state-dir", str(launcher.state)], capture_output=True,
                          text=True, check=True).stdout


def _killed_in(launcher: Launcher, ready: Path) -> int:
    """keepalived stops; once `ready` exists (written by the STOP's stop_action or on_failure, which
    then hangs) the worker is SIGKILLed (the OOM killer) and gone: no reader lives to start another.
    The dead worker's pid."""
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    k.stop([])
    launcher.wait_for(f"{ready.name} written", ready.exists)
    worker = _worker_pid(launcher)
    os.kill(worker, signal.SIGKILL)
    launcher.wait_for("the worker gone and reaped", lambda: not os.path.exists(f"/proc/{worker}"))
    return worker


def _hangs(path: Path, pid_file: Path, *lines: str) -> Path:
    """A command that runs `lines`, writes its pid to `pid_file` and sleeps; once that exists, it
    exits at once (the next worker runs it again)."""
    path.write_text(f'#!/bin/sh\n[ -e "{pid_file}" ] && exit 0\n' + "".join(f"{line}\n" for line in lines) +
                    f'echo $$ > "{pid_file}.tmp"; mv "{pid_file}.tmp" "{pid_file}"\nexec sleep 300\n')
    path.chmod(0o755)
    return path


def _lives_on(launcher: Launcher, impostor: subprocess.Popen[bytes], pid_file: Path) -> bool:
    """keepalived starts again (its BACKUP is #3) while `impostor` has the dead worker's pid: whether
    the process `pid_file` names (what the dead worker ran) still runs once #3 is done."""
    try:
        k = launcher.keepalived()
        k.start()
        k.write(VI.format("BACKUP"))
        launcher.wait_for("#3 done", lambda: 3 in _results(launcher))
        left = processes.running(int(pid_file.read_text()))
        k.stop([])
        return left
    finally:
        impostor.kill()
        impostor.wait()


@needs("a writable cgroup v2 hierarchy, as root", CGROUPS)
def test_a_dead_workers_pid_taken_in_its_cgroup_does_not_stall_the_next_worker(launcher: Launcher) -> None:
    """The worker dies in the STOP's stop_action; until keepalived starts again its pid is free, and
    a long-lived process of the worker's cgroup gets it (pids wrap).  The next worker tells that
    process from the dead worker (the start time in the action cgroup's name): it ends the
    stop_action, re-runs the STOP and runs keepalived's new events, and does not wait for it."""
    stop_pid = launcher.dir / "stop.pid"
    launcher.stop_action(_hangs(launcher.dir / "stop.sh", stop_pid))
    worker = _killed_in(launcher, stop_pid)
    assert not _lives_on(launcher, processes.with_pid(worker, launcher.dir), stop_pid)
    assert "still runs" not in launcher.log_text()


@needs("a writable cgroup v2 hierarchy, as root", CGROUPS)
def test_a_dead_workers_pid_taken_elsewhere_does_not_spare_its_on_failure(launcher: Launcher) -> None:
    """The worker dies while on_failure runs (the STOP's stop_action failed; keepalived stopped), and
    a process in another cgroup gets its pid before keepalived starts again.  The next worker still
    ends what the dead one left in its action cgroup (on_failure, holding the recorder's tree lock)
    before it runs anything: no overlap."""
    hold = launcher.dir / "on_failure.pid"
    on_failure = _hangs(launcher.dir / "on_failure.sh", hold, f'exec 9>>"{launcher.rec}.tree"', "flock -n 9",
                        f'printf %s "$NL_SEQ" > "{launcher.rec}.owner"')
    failing = launcher.dir / "stop.sh"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    launcher.extra_args += ["--config", str(_ini(launcher, f"stop_action = {failing}", f"on_failure = {on_failure}"))]
    worker = _killed_in(launcher, hold)
    elsewhere = f"{containment.own_cgroup()}/nl-test-elsewhere-{os.getpid()}"
    os.mkdir(elsewhere)
    try:
        assert not _lives_on(launcher, processes.with_pid(worker, launcher.dir, elsewhere), hold), \
            "the dead worker's on_failure survived it"
    finally:
        containment.wait_unpopulated(elsewhere, 10)
        os.rmdir(elsewhere)


@needs("a writable cgroup v2 hierarchy, as root", CGROUPS)
def test_a_timeout_ends_a_child_that_moved_itself_out_of_the_actions_cgroup(launcher: Launcher) -> None:
    """A child (root) moves itself from the action's cgroup into the worker's: it keeps the action's
    mark, session and parent chain, which a timeout looks at beside the cgroup, so it is ended
    with the action and the next action does not start beside it."""
    moved = launcher.dir / "moved.pid"
    then = ('if [ "$3" = MASTER ]; then\n'
            '  ( cg=$(grep "^0::" /proc/self/cgroup | cut -d: -f3-)\n'
            '    for root in /sys/fs/cgroup /sys/fs/cgroup/unified; do\n'
            '      [ -e "$root$cg/cgroup.procs" ] && echo $BASHPID > "$root${cg%/*}/cgroup.procs"; done\n'
            f'    echo $BASHPID > "{moved}.tmp"; mv "{moved}.tmp" "{moved}"; exec sleep 60 ) &\n'
            '  sleep 60\nfi\n')
    launcher.handler = recorder.install(launcher.dir / "handler2.sh", records=launcher.rec, then=then)
    ini = launcher.dir / "t.ini"
    ini.write_text("[launcher]\ntimeout = 2\nkill_grace = 0.2\n")
    k = launcher.keepalived("--config", str(ini))
    k.start()
    k.write(VI.format("MASTER"))
    launcher.wait_for("the child to move", moved.exists)
    k.write(VI.format("BACKUP"))
    launcher.settle(2)
    assert not processes.running(int(moved.read_text()))
    k.stop([])
    launcher.settle(3)


@needs("a writable cgroup v2 hierarchy, as root", CGROUPS)
def test_what_a_finished_action_put_in_a_sub_cgroup_of_its_own_is_released_too(launcher: Launcher) -> None:
    """A root action makes a sub-cgroup of its cgroup and leaves a child there, then exits 0.  The
    child is released like any (moved into the worker's cgroup, the sub-cgroup removed, the log line
    names it), so the next action's timeout, in that same cgroup, cannot end it."""
    left = launcher.dir / "left.pid"
    then = ('if [ "$3" = MASTER ]; then\n'
            '  cg=$(grep "^0::" /proc/self/cgroup | cut -d: -f3-)\n'
            '  for root in /sys/fs/cgroup /sys/fs/cgroup/unified; do [ -e "$root$cg/cgroup.procs" ] && break; done\n'
            '  mkdir "$root$cg/sub"\n'
            '  sleep 60 </dev/null >/dev/null 2>&1 &\n'
            '  echo $! > "$root$cg/sub/cgroup.procs"\n'
            f'  echo $! > "{left}.tmp"; mv "{left}.tmp" "{left}"\n'
            'fi\n')
    launcher.handler = recorder.install(launcher.dir / "handler2.sh", records=launcher.rec, then=then)
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    child = int(left.read_text())
    try:
        log = launcher.log_text()
        assert f"{RELEASED}: {child} (sleep 60)" in log, log[-2000:]
        with open(f"/proc/{child}/cgroup") as fh:
            now = next(line for line in fh.read().splitlines() if line.startswith("0::"))
        assert "/notify-launcher-" not in now, f"still in the action's cgroup: {now}"
        k.write(VI.format("BACKUP"))
        launcher.settle(2)
        k.stop([])
        launcher.settle(3)
        assert processes.running(child), "released, yet ended"
    finally:
        os.kill(child, signal.SIGKILL)


@needs("a writable cgroup v2 hierarchy, as root", CGROUPS)
def test_a_dead_workers_empty_action_cgroup_goes_with_the_empty_cgroups_below_it(launcher: Launcher,
                                                                                 tmp_path: Path) -> None:
    """A worker died (here: of another state directory) and left an action cgroup with nobody in it
    but an empty sub-cgroup an action made (rmdir refuses a cgroup with a child cgroup): the next
    worker's sweep removes both, deepest first.  Before, such a slot stayed for good, and every
    worker start tried it again."""
    home = containment.own_cgroup()
    assert home is not None
    dead = subprocess.Popen(["true"])
    dead.wait()
    token = containment.cgroup_prefix(str(tmp_path / "another-state-dir"))
    slot = Path(home) / containment.slot_name(token, ProcessId(dead.pid, 1), 1)
    (slot / "sub" / "deeper").mkdir(parents=True)
    try:
        k = launcher.keepalived()
        k.start()
        k.write(VI.format("MASTER"))
        launcher.wait_for("the action", lambda: len(launcher.starts()) == 1)
        launcher.wait_for("the dead worker's empty cgroups removed", lambda: not slot.exists())
        k.stop([])
    finally:
        for path in (slot / "sub" / "deeper", slot / "sub", slot):
            if path.exists():
                path.rmdir()


@needs("a writable cgroup v2 hierarchy, as root", CGROUPS)
def test_a_cgroup_that_only_shares_the_prefix_is_left_alone(launcher: Launcher) -> None:
    """The sweep removes action cgroups (slot_name's names) only: an empty cgroup whose name merely
    starts with notify-launcher- (another tool's, or this suite's container harness, which makes
    notify-launcher-test-... and joins it a moment later) stays, with what is below it.  (Seen: the
    sweep, removing empty sub-cgroups too, took the harness's cgroup from under it.)"""
    home = containment.own_cgroup()
    assert home is not None
    foreign = Path(home) / f"{containment.CGROUP_PREFIX}test-someone-else-{os.getpid()}"
    (foreign / "sub").mkdir(parents=True)
    try:
        k = launcher.keepalived()
        k.start()
        k.write(VI.format("MASTER"))
        launcher.wait_for("the action (after the worker's sweep)", lambda: len(launcher.starts()) == 1)
        assert (foreign / "sub").is_dir()
        k.stop([])
    finally:
        for path in (foreign / "sub", foreign):
            if path.exists():
                path.rmdir()


def test_a_worker_stopped_past_the_deadline_records_the_actions_own_exit(launcher: Launcher) -> None:
    """The worker is not scheduled (SIGSTOP) from its action's start until well past the action's
    timeout; the action itself exited 0 meanwhile.  Recorded: exit 0, not a timeout; on_failure does
    not run; the log says the worker was stalled; `status` said the worker was stopped."""
    gate, paged = launcher.dir / "gate", launcher.dir / "paged"
    (launcher.dir / recorder.SLEEPS).write_text(recorder.sleep_line("*", "MASTER", 0, gate))
    hook = launcher.dir / "page.sh"
    hook.write_text(f"#!/bin/sh\ntouch {paged}\n")
    hook.chmod(0o755)
    timeout = 2.0
    k = launcher.keepalived("--timeout", f"{timeout:g}", "--on-failure", str(hook))
    k.start()
    k.write(VI.format("MASTER"))
    launcher.wait_for("#1's start", lambda: launcher.starts())
    started = time.monotonic()
    worker = _worker_pid(launcher)
    os.kill(worker, signal.SIGSTOP)
    try:
        launcher.wait_for("the worker stopped", lambda: psutil.Process(worker).status() == psutil.STATUS_STOPPED)
        assert f"its worker pid {worker} is stopped" in _status(launcher)
        gate.touch()
        launcher.wait_for("#1's action to end", lambda: [r for r in launcher.records() if r.kind == "end"])
        # the deadline passes while the worker is stopped: a state of the clock, not a nap
        launcher.wait_for("the action's deadline to pass", lambda: time.monotonic() > started + timeout + 1.5)
    finally:
        os.kill(worker, signal.SIGCONT)
    launcher.settle(1)
    k.stop([])
    end = replay(str(launcher.state / "progress"), keep_ends=5).ends[0]
    assert end["seq"] == 1 and end["result"] == "exit 0" and end["ok"] and not end["timed_out"], end
    assert end.get("stalled", 0) > timeout
    assert not paged.exists(), "on_failure ran for an action that exited 0"
    assert "the worker was not scheduled for" in launcher.log_text()


@needs("libfaketime (Debian package faketime)", os.path.exists(FAKETIME))
def test_a_wall_clock_step_does_not_keep_recovery_from_ending_the_orphan(launcher: Launcher,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The wall clock steps 10 s forward (NTP, a resumed VM) while a worker lives: the wall-clock
    time of its action's spawn and the kernel's boot-based start time of that process then disagree
    by 10 s (a real step moves /proc/stat's btime; libfaketime moves what time() returns, to the same
    effect).  After the worker's death the next worker still knows the orphan for the dead worker's
    action, ends it, and only then runs the event again (no overlap)."""
    clock = launcher.dir / "clock"
    clock.write_text("+0\n")
    faked = {"LD_PRELOAD": FAKETIME, "FAKETIME_TIMESTAMP_FILE": str(clock), "FAKETIME_NO_CACHE": "1",
             "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    for name, value in faked.items():  # for the reader (and the workers it forks), not for the test's tools
        monkeypatch.setenv(name, value)
    child = launcher.dir / "child"
    launcher.handler = recorder.install(launcher.dir / "work.sh", records=launcher.rec, then=f"""
if [ "$3" = MASTER ] && [ ! -e {child} ]; then
    echo $$ > {child}
    sleep 300
fi""")
    k = launcher.keepalived()
    k.start()
    monkeypatch.undo()
    launcher.wait_standby()
    clock.write_text("+10\n")
    launcher.wait_for("the launcher's clock stepped", lambda: _faked_time(faked) > time.time() + 9)
    k.write(VI.format("MASTER"))
    launcher.wait_for("#1's action", lambda: child.exists() and child.read_text().strip())
    action = int(child.read_text())
    os.kill(_worker_pid(launcher), signal.SIGKILL)
    k.write(VI.format("BACKUP"))
    launcher.settle(2)
    k.stop([])
    assert not _alive([action]), "the orphan survived the recovery after a clock step"
    assert f"ending the dead worker's action pid {action}" in launcher.log_text()


def _faked_time(faked: dict[str, str]) -> float:
    """The time as the launcher's processes see it (a Python started with the same environment)."""
    out = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], capture_output=True,
                         text=True, check=True, env=dict(os.environ, **faked))
    return float(out.stdout)


# -- the parts, directly ------------------------------------------------------------------------

def _start_marked(contained: Containment, seq: int, script: str) -> subprocess.Popen[bytes]:
    """A process carrying `seq`'s mark, as the worker's action would (for end_recorded)."""
    env = contained.box(seq).environment(dict(os.environ))
    return subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True)


def test_end_recorded_finds_a_double_forked_setsid_process_by_its_mark(tmp_path: Path) -> None:
    """Recovery without cgroups: the dead worker's action double-forked a setsid'd process and
    exited; only the mark can find it.  Another event's process is left alone."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    pidfile, other_pid = tmp_path / "pid", tmp_path / "other"
    os.environ[NO_CGROUPS] = "yes"
    try:
        contained = Containment(str(state))
        contained.start()
    finally:
        del os.environ[NO_CGROUPS]
    other = _start_marked(contained, 6, f"echo $$ > {other_pid}; exec sleep 300")
    first = _start_marked(contained, 7, f"(setsid sleep 300 & echo $! > {pidfile}) & wait")
    try:
        first.wait(30)
        wait_for("both marked processes' pids", lambda: pidfile.exists() and pidfile.read_text().strip()
                 and other_pid.exists(), timeout=30)
        orphan = int(pidfile.read_text())
        notes: list[str] = []
        assert contained.end_recorded(7, None, None, None, notes.append) == []
        assert not processes.running(orphan)
        assert other.poll() is None, "a process of another event was killed"
        assert any(str(orphan) in n for n in notes)
    finally:
        other.kill()
        other.wait()


