"""Faults: a worker or a reader SIGKILLed mid-way loses nothing that was journaled."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import struct
import termios
import time

import psutil
import pytest
from pathlib import Path

from support import LAUNCHER, VI, processes, recorder, tmpfs
from support.launcher import Launcher
from support.marks import needs
from support.recorder import check_order


def _worker_pid(launcher: Launcher) -> int:
    return int((launcher.state / "worker.pid").read_text().split()[0])


@pytest.mark.parametrize("policy", ["rerun", "skip"])
def test_worker_killed_mid_action_is_recovered_by_policy(launcher: Launcher, policy: str) -> None:
    ini = launcher.dir / "x.ini"
    ini.write_text(f"[launcher]\non_crash = {policy}\n")
    launcher.sleep_on("MASTER", 30)
    k = launcher.keepalived("--config", str(ini))
    k.start()
    k.write(VI.format("MASTER"))
    launcher.wait_for("the first action's start record", lambda: launcher.records(), timeout=20)
    action_pid = [p for p in psutil.Process(_worker_pid(launcher)).children()][0].pid
    dead = _worker_pid(launcher)
    os.kill(dead, signal.SIGKILL)
    launcher.sleep_on("nothing", 0)
    k.write(VI.format("BACKUP"))  # the next event brings a new worker, which recovers #1 first
    launcher.settle(2)
    k.stop([])
    assert not psutil.pid_exists(action_pid) or psutil.Process(action_pid).status() == psutil.STATUS_ZOMBIE
    states = [(r.kind, r.seq) for r in launcher.records()]
    if policy == "rerun":
        assert states == [("start", 1), ("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    else:
        assert states == [("start", 1), ("start", 2), ("end", 2)]
    log = launcher.log_text()
    assert f"worker pid {dead} died while this event's action (pid {action_pid}) ran; policy on_crash={policy}" in log
    assert f"ending the dead worker's action pid {action_pid}" in log


def test_reader_killed_mid_burst_journaled_events_all_run(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    deadline, i = time.monotonic() + 120, 0
    while launcher.last_seq() <= 100:  # sequence numbers, not journal lines: the worker compacts
        assert time.monotonic() < deadline, "the reader journaled no more than 100 events in 120 s"
        if not k.write(f'INSTANCE "VI_{i % 5}" {"MASTER" if i % 2 else "BACKUP"} 100'):
            time.sleep(0.001)  # the pipe is full (a starved reader): wait on the journal, not a count
        i += 1
    assert k.proc is not None
    os.kill(k.proc.pid, signal.SIGKILL)
    k.proc.wait()
    journaled = launcher.last_seq()  # final: the only reader is dead (a torn last line never runs)
    del k.lines[journaled:]  # lines the killed reader held unjournaled are gone with it (docs/invariants.md, 4)
    launcher.settle(journaled)
    started, problems = check_order(launcher.records())
    assert problems == 0 and started == list(range(1, journaled + 1))
    assert journaled > 100


def test_worker_killed_with_no_further_event_is_noticed_by_the_reader(launcher: Launcher) -> None:
    launcher.sleep_on("MASTER", 30)
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    launcher.wait_for("the first action's start record", lambda: launcher.records(), timeout=20)
    dead = _worker_pid(launcher)
    launcher.sleep_on("nothing", 0)
    os.kill(dead, signal.SIGKILL)
    launcher.wait_for("three records", lambda: len(launcher.records()) == 3, timeout=20)  # start 1 (killed), start 1 (rerun), end 1
    launcher.settle(1)
    k.stop([])
    assert [(r.kind, r.seq) for r in launcher.records()] == [("start", 1), ("start", 1), ("end", 1)]
    log = launcher.log_text()
    assert f"worker pid {dead} died without finishing; starting another" in log
    assert f"worker pid {dead} died while this event's action" in log


def _unread(fd: int) -> int:
    """Bytes in the FIFO that no reader has read yet (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def _in_poll(pid: int) -> bool:
    """The process sleeps in poll(2) (its wchan, in the kernel's poll_schedule_timeout)."""
    with open(f"/proc/{pid}/wchan") as fh:
        return "poll" in fh.read()


@needs("root (it mounts a tiny tmpfs)", os.geteuid() == 0)
def test_full_disk_holds_events_in_memory_and_recovers(launcher: Launcher) -> None:
    """The reader holds what it cannot journal in memory, in order, and journals it late once the
    disk has room.  The disk stays full until the test frees it, and the test frees it only once the
    reader has tried every line it read: (1) the worker is held inside the first burst event's action
    from before the disk is filled (every action rewrites action.mark, O_TRUNC then a write: a page
    free for a moment, which the reader's next append may take); (2) the filler goes only once the
    reader, the FIFO empty, waits in poll(2) again (not while it still handles what it read: that
    line's append would succeed at once, and nothing would be journaled late)."""
    gate = launcher.dir / "gate"
    with tmpfs.mounted(launcher.state, "128k", before_unmount=launcher.end_processes):
        k = launcher.keepalived()
        k.start()
        k.write(VI.format("BACKUP"))
        launcher.settle(1)
        (launcher.dir / recorder.SLEEPS).write_text(recorder.sleep_line("*", "BACKUP", 0, gate))
        k.write('INSTANCE "VI_1" BACKUP 0')
        launcher.wait_for("the worker held in action #2", lambda: [r.seq for r in launcher.starts()] == [1, 2])
        filler = launcher.state / "filler"
        tmpfs.fill_file_system(filler)
        for n in range(1, 150):  # tmpfs fills by pages: the journal's last page still takes a few lines
            k.write(f'INSTANCE "VI_1" {"MASTER" if n % 2 else "BACKUP"} {n}')
        launcher.wait_for("the full journal in the log", lambda: re.search(r"cannot write the journal \S+ \(No space left on device\)",
                                                                        launcher.log_text()), timeout=20)
        assert k.proc is not None
        reader = k.proc.pid
        launcher.wait_for("the reader back in poll(2), every line read off the FIFO and tried",
                          lambda: _unread(k.fd) == 0 and _in_poll(reader), timeout=20)
        assert k.proc.poll() is None and launcher.last_seq() < 151  # the reader lives, holding events
        filler.unlink()
        launcher.wait_for("the held events journaled", lambda: launcher.last_seq() >= 151, timeout=20)
        gate.touch()
        launcher.settle(151)
        k.stop([])
        launcher.settle(152)
        started, problems = check_order(launcher.records())
        assert problems == 0 and started == list(range(1, 152))
        assert [int(r.priority) for r in launcher.starts()][1:] == list(range(150))
        log = launcher.log_text()
        full, again = log.find("cannot write the journal"), log.find("journal: working again")
        assert 0 <= full < again < log.find('#151 INSTANCE "VI_1" MASTER 149 | received'), (
            "the held events were not journaled once the disk had room, after the full journal was said")


def test_unwritable_log_file_does_not_stop_actions(launcher: Launcher) -> None:
    launcher.log = Path("/proc/notify-launcher-test/launcher.log")  # cannot be created, even by root
    launcher.unchecked = "no log: the invariants checker reads the run's history from it"
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    k.write(VI.format("BACKUP"))
    launcher.wait_for("four records", lambda: len(launcher.records()) == 4, timeout=20)
    report = k.stop([])
    assert not report.killed
    assert [(r.kind, r.seq) for r in launcher.records()] == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]


def test_ten_thousand_garbage_lines_then_valid_events(launcher: Launcher) -> None:
    import random
    rng = random.Random(7)
    garbage = []
    for i in range(10_000):
        kind = i % 6
        if kind == 0:
            garbage.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))).replace(b"\n", b""))
        elif kind == 1:
            garbage.append(b"\0" * rng.randrange(1, 5) + b"INSTANCE \xff\xfe")
        elif kind == 2:
            garbage.append(b'INSTANCE "VI_1\x01" NAPPING 100')
        elif kind == 3:
            garbage.append(b"INSTANCE")
        elif kind == 4:
            garbage.append(b'WHAT "VI_1" MASTER 100')
        else:
            garbage.append(b"RS [1.2.3.4]:tcp:80 UP")
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    assert k.proc is not None
    reader = psutil.Process(k.proc.pid)
    rss_before = reader.memory_info().rss
    k.write_raw(b"x" * (1 << 20) + b"\n")  # a 1 MiB line
    k.write_raw(b"\n".join(garbage) + b"\n")
    for state in ("BACKUP", "MASTER", "FAULT"):
        k.write(VI.format(state))
    launcher.settle(3)
    rss_after = reader.memory_info().rss
    k.stop([])
    assert [r.state for r in launcher.starts()] == ["BACKUP", "MASTER", "FAULT"]
    log = launcher.log_text()
    assert log.count(" rejected (") >= 10_000
    assert "line 1 rejected (line longer than 4096 bytes)" in log
    assert rss_after - rss_before < 8 * 1024 * 1024, f"reader grew by {(rss_after - rss_before) >> 20} MiB"


@needs("root (it runs the reader as nobody)", os.geteuid() == 0)
def test_unreadable_fifo_is_a_clear_error() -> None:
    """keepalived makes the FIFO 0600 for the script user: a reader running as another user says so."""
    import subprocess
    import tempfile
    nobody = 65534

    def as_nobody() -> None:
        os.setgid(nobody)
        os.setuid(nobody)

    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # pytest's tmp dirs are closed to nobody
        os.chmod(top, 0o755)
        shared = Path(top) / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        fifo = Path(top) / "notify.fifo"
        os.mkfifo(fifo, 0o600)
        res = subprocess.run([LAUNCHER, "--handler", "/bin/true", "--state-dir", str(shared / "state"),
                              "--log-file", str(shared / "launcher.log"), str(fifo)],
                             capture_output=True, text=True, timeout=30, preexec_fn=as_nobody)
    if "Permission denied" in res.stderr and "FIFO" not in res.stderr:
        pytest.skip(f"this checkout is not readable by other users, so nobody cannot run it: {res.stderr}")
    assert res.returncode == 3, res.stderr
    assert (f"FIFO {fifo}: cannot open for reading: Permission denied (keepalived makes it 0600, owned by "
            f"the script user)") in res.stderr


@needs("root (it mounts a tiny tmpfs)", os.geteuid() == 0)
def test_no_action_starts_before_its_try_record_is_on_disk(launcher: Launcher) -> None:
    """On a full state file system the `try` record of an event cannot be written: the queue waits
    (logged) and its action does not start until the disk takes the record, so a worker killed
    while the action runs always leaves its successor a record to recover the event by."""
    with tmpfs.mounted(launcher.state, "256k", before_unmount=launcher.end_processes):
        launcher.sleep_on("MASTER", 0)
        k = launcher.keepalived()
        k.start()
        worker = launcher.wait_standby()
        os.kill(worker, signal.SIGSTOP)
        k.write(VI.format("MASTER"))
        launcher.wait_for("#1 journaled", lambda: launcher.last_seq() >= 1)
        filler = launcher.state / "filler"
        tmpfs.fill_file_system(filler)
        for name in ("a", "b", "c"):  # tmpfs fills by pages: the last one still takes a few bytes
            try:
                (launcher.state / name).write_bytes(b"x" * 512)
            except OSError:
                break
        os.kill(worker, signal.SIGCONT)
        launcher.wait_for("the unwritable try in the log", lambda: "cannot record 'try'" in launcher.log_text())
        assert "the queue waits until it can" in launcher.log_text()
        assert launcher.starts() == []
        filler.unlink()
        launcher.settle(1)
        assert [r.seq for r in launcher.starts()] == [1]
        assert "recorded 'try'" in launcher.log_text()
        k.stop([])
        launcher.settle(2)


def test_on_failure_of_a_killed_worker_is_ended_before_the_next_action(launcher: Launcher) -> None:
    """on_failure runs after its event's end record: no record names it.  SIGKILL the worker while
    it runs: the next worker finds it in the dead worker's action cgroup (by name, no record
    needed) and ends it before anything else runs, so it never lives past its on_failure_timeout
    nor beside the next action (the recorder's tree lock, taken by on_failure too)."""
    ofpid = launcher.dir / "of.pid"
    hook = launcher.dir / "onfail.sh"
    hook.write_text(f'#!/bin/bash\nexec 9>>"{launcher.rec}.tree"\nflock 9\necho $$ > "{ofpid}.tmp"\n'
                    f'mv "{ofpid}.tmp" "{ofpid}"\nsleep 60\n')
    hook.chmod(0o755)
    launcher.handler = recorder.install(launcher.dir / "handler2.sh", records=launcher.rec,
                                        then='[ "$3" = MASTER ] && exit 1; true')
    ini = launcher.dir / "of.ini"
    ini.write_text(f"[launcher]\non_failure = {hook}\non_failure_timeout = 30\n")
    k = launcher.keepalived("--config", str(ini))
    k.start()
    k.write(VI.format("MASTER"))
    launcher.wait_for("on_failure to start", ofpid.exists)
    hook_pid = int(ofpid.read_text())
    os.kill(_worker_pid(launcher), signal.SIGKILL)
    k.write(VI.format("BACKUP"))
    launcher.settle(2)
    assert not processes.running(hook_pid)
    assert "is gone; ending what it left running in its action cgroup" in launcher.log_text()
    assert [r.kind for r in launcher.records()].count("overlap") == 0
    k.stop([])
    launcher.settle(3)


@needs("strace", shutil.which("strace") is not None)
def test_a_worker_dead_before_its_start_record_leaves_no_process_of_the_action(launcher: Launcher) -> None:
    """The worker is killed (strace, at its second write to the progress file: `try` went through,
    `start` did not) right after it spawned the action, whose grandchild clears its environment
    (no mark), calls setsid and leaves its parent chain.  The next worker ends it all the same (it
    sits in the dead worker's action cgroup, found by name) before the event runs again."""
    import subprocess
    escaped = launcher.dir / "escaped.pid"
    then = ('if [ "$3" = MASTER ] && [ ! -e "%s" ]; then\n'
            '  ( exec env -i setsid sh -c \'echo $$ > "%s.tmp"; mv "%s.tmp" "%s"; exec sleep 60\' & )\n'
            '  sleep 60\nfi\n') % (escaped, escaped, escaped, escaped)
    launcher.handler = recorder.install(launcher.dir / "handler2.sh", records=launcher.rec, then=then)
    k = launcher.keepalived()
    k.start()
    worker = launcher.wait_standby()
    tracer = subprocess.Popen(["strace", "-qq", "-o", "/dev/null", "-p", str(worker), "-e", "trace=write",
                               "-P", str(launcher.state / "progress"), "-e", "inject=write:signal=KILL:when=2"])
    try:
        launcher.wait_for("strace attached", lambda: _traced(worker))
        time.sleep(0.5)  # TracerPid is set before strace has set up its injection
        k.write(VI.format("MASTER"))
        launcher.wait_for("the worker to die", lambda: not processes.running(worker))
    finally:
        tracer.wait(10)
    launcher.settle(1)
    assert re.search(r"worker pid \d+ died while preparing this event", launcher.log_text())
    assert not processes.running(int(escaped.read_text()))
    k.stop([])
    launcher.settle(2)


def _traced(pid: int) -> bool:
    """A tracer is attached to `pid` (TracerPid in its status)."""
    with open(f"/proc/{pid}/status") as fh:
        return any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in fh)
