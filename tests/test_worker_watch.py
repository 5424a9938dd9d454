"""Each reader watches the worker that serves it, and says once when it died: a replacement that
takes over first (queued behind it, or hearing a ring before it names itself in worker.pid) hides
neither; a fork refused is no worker that exited; a state directory whose mode cannot be set (a
read-only file system) is said in the log, not a silent exit.  (Red team on the early standby spawn
and the ring repeated until a worker heard us.)  Real readers (the keepalived stand-in), real
double-forked workers, real signals; every wait is on state (the kernel's view of the pidfds, the
log, worker.pid), never on a sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from functools import partial

from support import LAUNCHER, VI, processes, standby
from support.launcher import Launcher
from support.marks import needs
from support.standin import Keepalived




def test_a_standby_killed_while_the_second_readers_worker_queues_is_reported_by_it(launcher: Launcher) -> None:
    """Every death of a worker is reported in the log (the project's own test_standby_races
    test_a_standby_killed_under_two_readers_is_reported_once_by_each: once by each living reader).
    Here the first reader has left; the standby W stands by for R2 alone, and is SIGKILLed while idle.
    R2 watches it (a pidfd since its start), but WorkerWatch._crash_or_none tells a crash from a
    normal exit by what the dead worker left -- worker.pid still naming it, or a doorbell.sock nobody
    listens on -- and the worker queued behind worker.lock (R2's own, spawned when its ring found
    nobody; e4e0cc7 makes that queue the expected state: "the worker we spawned ... may be queued
    behind it") takes the lock within milliseconds, rewrites worker.pid and binds a new doorbell
    before R2 looks.  R2 takes the SIGKILL for a normal exit ("worker pid W left", DEBUG) and nobody
    says `worker pid W died without finishing`."""
    launcher.extra_args += ["--log-level", "DEBUG"]  # (shows what R2 took the death for)
    k1, k2, worker = standby.second_reader_queued_behind(launcher)
    k1.stop([])
    launcher.wait_for("the standby watching only the second reader", lambda: standby.watched_by(worker) == {standby.pid(k2)})
    launcher.wait_for("the second reader watching the standby", lambda: worker in standby.watched_by(standby.pid(k2)))
    # The reader loses the CPU for the few ms the queued worker takes to take over (a busy 2-core
    # machine; without the stop this fails about one run in four here).
    os.kill(standby.pid(k2), signal.SIGSTOP)
    try:
        os.kill(worker, signal.SIGKILL)
        launcher.wait_for("the queued worker taking over", lambda: standby.worker(launcher) not in (0, worker)
                          and (launcher.state / "doorbell.sock").exists(), timeout=30)
    finally:
        os.kill(standby.pid(k2), signal.SIGCONT)
    launcher.wait_for("the second reader watching the new worker",
                      lambda: standby.worker(launcher) in standby.watched_by(standby.pid(k2)), timeout=30)
    k2.write(VI.format("MASTER"))
    launcher.settle(2)  # R1's STOP, then MASTER
    log = launcher.log_text()
    reports = log.count(f"reader[{standby.pid(k2)}] WARN  #- - | worker pid {worker} died without finishing")
    assert reports == 1, f"the second reader reported the death of {worker} {reports} times:\n{log[-3000:]}"
    k2.stop([])


PIDS_V1 = "/sys/fs/cgroup/pids"  # (this machine: cgroup v1's pids controller; v2 would be pids.max in the unified tree)


def _pids_cgroup(name: str) -> str | None:
    path = os.path.join(PIDS_V1, name)
    try:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "pids.max"), "w") as fh:
            fh.write("max")
    except OSError:
        return None
    return path


@needs("a writable cgroup v1 pids controller (root)", os.access(PIDS_V1, os.W_OK))
def test_a_fork_refused_at_the_pid_limit_is_logged_once_and_no_worker_is_said_to_have_exited(
        launcher: Launcher) -> None:
    """docs/architecture.md: "fork() refused at the pid limit ... each is logged once (and again only
    when it changes, then `... working again`)".  WorkerLink._spawn opens the hello pipe
    (WorkerWatch.new_child: its read end registered in `hellos` and on the poller) BEFORE
    spawn_worker forks; when the fork is refused (EAGAIN) only the write end is closed, so the read
    end reads EOF at the next poll and the reader logs `a spawned worker exited before taking over;
    starting another in ...` -- a worker that never existed -- once per retry of the back-off, on top
    of the one ERROR `cannot start a worker: [Errno 11] ...`.  (The same for the early spawn at start,
    91b8141: its hello pipe sits on the poller the reader takes over.)  Seen: 13 such WARN lines in
    16 s, and the back-off restarts at 0.1 s with every event."""
    cgroup = _pids_cgroup(f"rt-spawn-{os.getpid()}")
    assert cgroup is not None
    wrapper = launcher.dir / "in-pids-cgroup.sh"
    wrapper.write_text(f"#!/bin/sh\necho $$ > {cgroup}/cgroup.procs\nexec {LAUNCHER} \"$@\"\n")
    wrapper.chmod(0o755)
    argv = launcher.argv()
    argv[0] = str(wrapper)
    k = Keepalived(argv, str(launcher.fifo))
    launcher.standins.append(k)
    launcher.logs.append(launcher.log)
    try:
        k.start()
        worker = launcher.wait_standby()
        with open(os.path.join(cgroup, "pids.max"), "w") as fh:
            fh.write("1")  # the reader alone, once the worker is gone: its next fork is refused
        os.kill(worker, signal.SIGKILL)
        launcher.wait_for("the refused fork logged", lambda: "cannot start a worker: [Errno 11]" in launcher.log_text())
        deadline = time.monotonic() + 3  # the back-off retries at +0.1, 0.2, 0.4, 0.8, 1.6 s
        false_exits: list[str] = []
        while time.monotonic() < deadline and not false_exits:
            false_exits = [line for line in launcher.log_text().splitlines()
                           if "a spawned worker exited before taking over" in line]
            time.sleep(0.05)
        errors = launcher.log_text().count("cannot start a worker")
        with open(os.path.join(cgroup, "pids.max"), "w") as fh:
            fh.write("max")
        k.write(VI.format("MASTER"))
        launcher.settle(1)
        k.stop([])
    finally:
        launcher.end_processes()
        os.rmdir(cgroup)
    assert errors == 1
    assert not false_exits, "no worker was spawned (fork refused), yet:\n" + "\n".join(false_exits)


def test_a_reader_that_cannot_chmod_its_existing_state_directory_says_why_in_the_log(launcher: Launcher) -> None:
    """(Not of 91b8141/e4e0cc7: found on the way, in the start-up that precedes the early spawn.)
    "The reader dies only by keepalived's hand ... a read-only disk ... each is logged once"; a
    reader that cannot start says why "everywhere someone may look" (cli._fatal: stderr, syslog, the
    log).  cli._refuse_foreign_state_dir -> statedir.ensure_state_dir chmods an existing state
    directory whose mode is not 0700 with no try: on a read-only file system (or an immutable
    directory) os.chmod raises OSError, which run_reader's `except LauncherError` does not catch.
    The reader dies with a Python traceback on keepalived's /dev/null stderr, exit 1, and the log
    file (writable: it is elsewhere) holds nothing at all.  Compare a 0700 directory on the same
    read-only mount: the reader runs, logs `cannot prepare the state directory ...: Read-only file
    system` and retries."""
    source, mount = launcher.dir / "source", launcher.dir / "ro"
    (source / "state").mkdir(parents=True)
    (source / "state").chmod(0o755)  # root's, safe, just not 0700 (made by hand, or by an older package)
    mount.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mount)], check=True)
    try:
        launcher.state = mount / "state"
        k = launcher.keepalived()
        k.start()
        assert k.proc is not None
        try:
            code = k.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None  # it runs: what follows checks the log
        launcher.unchecked = "the reader must not run on a read-only state directory; only what it says is checked"
        assert launcher.state.name in launcher.log_text(), (
            f"the reader exited {code} and its log says nothing:\n{launcher.log_text()!r}")
    finally:
        launcher.end_processes()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _traced_launcher(launcher: Launcher, name: str, strace_options: list[str], *more: str) -> Keepalived:
    """A stand-in whose reader runs under strace, -f (its workers too: they are its forks), as a
    detached tracer (-DDD: out of the stand-in's process group, which keepalived's signals reach)."""
    wrapper = launcher.dir / f"{name}.sh"
    options = " ".join(f"'{o}'" for o in strace_options)
    wrapper.write_text(f"#!/bin/sh\nexec strace -DDD -f -qq -o /dev/null {options} -- {LAUNCHER} \"$@\"\n")
    wrapper.chmod(0o755)
    argv = launcher.argv(*more)
    argv[0] = str(wrapper)
    k = Keepalived(argv, str(launcher.dir / f"{name}.fifo"))
    launcher.standins.append(k)
    if launcher.log not in launcher.logs:
        launcher.logs.append(launcher.log)
    return k


def _heard_by_a_replacement_before_it_named_itself(launcher: Launcher) -> tuple[Keepalived, Keepalived, int]:
    """R1 and R2 stood by by W; W SIGKILLed; R1's replacement heard by R2 between its doorbell's bind
    and its worker.pid (held open: R1's workers are held 5 s at their prctl(PR_SET_CHILD_SUBREAPER),
    Worker.start's step between the two -- the launcher's only prctl).  Returns (k1, k2, replacement)."""
    k1 = _traced_launcher(launcher, "first", ["-e", "trace=prctl", "-e", "inject=prctl:delay_enter=5000000"],
                          "--linger", "0")
    k2 = Keepalived(launcher.argv("--linger", "0"), str(launcher.dir / "second.fifo"))
    launcher.standins.append(k2)
    k2.start()  # first, untraced: the standby W is its fork (a traced one would stay a zombie, visible, until strace reaps it)
    dead = launcher.wait_standby()
    k1.start()
    r1, r2 = standby.pid(k1), standby.pid(k2)
    launcher.wait_for("the standby watching both readers, and both watching it",
                      lambda: standby.stood_by_for(launcher, r1, r2) and dead in standby.watched_by(r1) & standby.watched_by(r2))
    os.kill(r2, signal.SIGSTOP)  # R2 looks at the crash only once R1's replacement listens (a busy machine)
    try:
        os.kill(dead, signal.SIGKILL)
        launcher.wait_for("R1's replacement listening, worker.pid still naming the dead one", lambda: [
            p for p in processes.find(str(launcher.state)) if p.pid not in (r1, r2, dead)
            and (launcher.state / "doorbell.sock").exists() and standby.watched_by(p.pid) >= {r1}], timeout=30)
        # W reaped, as keepalived (a child subreaper) or systemd reap at once; this machine's pid 1 takes
        # up to ~2 s, and a zombie still takes a pidfd (R2 would then watch it, see it "leave", ring again)
        launcher.wait_for("the dead standby reaped", lambda: not os.path.exists(f"/proc/{dead}"), timeout=30)
    finally:
        os.kill(r2, signal.SIGCONT)
    launcher.wait_for("the replacement named in worker.pid", lambda: standby.worker(launcher) not in (0, dead), timeout=30)
    launcher.wait_for("the replacement standing by for both readers", partial(standby.stood_by_for, launcher, r1, r2),
                      timeout=30)
    return k1, k2, standby.worker(launcher)


def test_a_reader_heard_by_a_replacement_before_it_names_itself_watches_it(launcher: Launcher) -> None:
    """A living reader always has a standby watching it, and watches that standby (its crash watch).
    After a ring is "heard", WorkerLink.ring calls follow_named(), which trusts worker.pid whenever it
    names anybody (`pidfile.read(...) or locks.lock_holder(...)`).  A replacement worker binds its
    doorbell (Worker.start: doorbell.open) BEFORE it writes worker.pid (_name_self), so a ring in
    between is heard while worker.pid still names the dead worker it replaces: follow_named finds
    that one dead (already reported: nothing said) and watches nobody -- and, heard, the reader
    rings no more (e4e0cc7 re-rings only until "heard").  R2 then never watches the replacement;
    when that one dies too, R2 neither reports it nor replaces it, and the next standby (R1's) never
    hears of R2.  Here that window (~0.1 ms of the worker's start) is held open with strace: the
    window (~0.1 ms of the worker's start) is held open with strace (the helper above)."""
    launcher.extra_args += ["--log-level", "DEBUG"]  # (the log then shows what R2 did)
    k1, k2, replacement = _heard_by_a_replacement_before_it_named_itself(launcher)
    launcher.wait_for("R2 watching its standby", lambda: replacement in standby.watched_by(standby.pid(k2)), timeout=10)
    k2.stop([])
    k1.stop([])


def test_a_reader_that_missed_its_replacements_name_is_left_with_no_standby(launcher: Launcher) -> None:
    """The consequence of the previous test: the replacement is SIGKILLed too.  R1 reports it and
    spawns the next standby, which hears only R1 (its spawner); R2, watching nobody, neither reports
    the death nor rings.  R1 leaves (keepalived reloaded it away, say): that standby, at linger 0,
    leaves with it, and R2 lives on with no worker at all -- its next event waits for a fork and
    the worker's imports, and until then nobody runs what it journaled (nothing, here)."""
    k1, k2, replacement = _heard_by_a_replacement_before_it_named_itself(launcher)
    r2 = standby.pid(k2)
    os.kill(replacement, signal.SIGKILL)
    launcher.wait_for("R1's next standby", lambda: standby.worker(launcher) not in (0, replacement), timeout=30)
    k1.stop([])
    try:
        launcher.wait_for("a standby watching R2", partial(standby.stood_by_for, launcher, r2), timeout=10)
    finally:
        log = launcher.log_text()
        k2.stop([])
    reports = log.count(f"reader[{r2}] WARN  #- - | worker pid {replacement} died without finishing")
    assert reports == 1, f"R2 reported the death of {replacement} {reports} times"


def _named(launcher: Launcher) -> int:
    """The pid worker.pid names (0: none, or unreadable), running or not."""
    try:
        return int((launcher.state / "worker.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


@needs("root (it hands out pids through /proc/sys/kernel/ns_last_pid)", os.geteuid() == 0)
def test_a_replacement_given_the_dead_workers_pid_has_its_own_death_reported(launcher: Launcher) -> None:
    """Every death of a worker is reported once by each reader that watched it, a replacement given
    the dead worker's pid (pid reuse, forced through ns_last_pid) too: the reader tells the two by
    (pid, start time), not by the pid it reported last.  (Red team: the second death was taken for a
    normal exit.)"""
    launcher.extra_args += ["--log-level", "DEBUG"]
    k = launcher.keepalived("--linger", "0")
    k.start()
    r = standby.pid(k)
    dead = launcher.wait_standby()
    launcher.wait_for("the reader watching its standby", lambda dead=dead: dead in standby.watched_by(r))
    reused = 0
    for attempt in range(12):
        os.kill(r, signal.SIGSTOP)
        try:
            os.kill(dead, signal.SIGKILL)
            launcher.wait_for("the dead standby reaped", lambda dead=dead: not os.path.exists(f"/proc/{dead}"), timeout=30)
            with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
                fh.write(str(dead - 1 - attempt % 4))  # the replacement is the reader's fork's fork
        finally:
            os.kill(r, signal.SIGCONT)
        launcher.wait_for("the replacement named and watched", lambda dead=dead: _named(launcher) not in (0, dead)
                          and _named(launcher) in standby.watched_by(r) or _named(launcher) == dead
                          and processes.running(dead) and dead in standby.watched_by(r), timeout=30)
        if _named(launcher) == dead:
            reused = dead
            break
        dead = _named(launcher)
    assert reused, "no replacement was given its predecessor's pid in 12 tries"
    log = launcher.log_text()
    before = log.count(f"reader[{r}] WARN  #- - | worker pid {reused} died without finishing")
    os.kill(reused, signal.SIGKILL)
    launcher.wait_for("the next replacement", lambda: _named(launcher) not in (0, reused), timeout=30)
    log = launcher.log_text()
    after = log.count(f"reader[{r}] WARN  #- - | worker pid {reused} died without finishing")
    k.stop([])
    assert after == before + 1, (f"the second worker with pid {reused} died unreported:\n"
                                 + "\n".join(line for line in log.splitlines() if f"[{r}]" in line))


@needs("root (it hands out pids through /proc/sys/kernel/ns_last_pid)", os.geteuid() == 0)
def test_a_normal_exit_whose_pid_the_next_worker_gets_is_no_death(launcher: Launcher) -> None:
    """A normal exit is never reported as a death: R watches W1; W1 leaves normally (SIGTERM: queue
    drained, worker.pid removed); the next worker (`send`'s) is given W1's pid (forced through
    ns_last_pid) and names itself in worker.pid before R gets the CPU (SIGSTOP).  R must compare
    (pid, start time): a worker.pid naming the pid alone reported a death (red team)."""
    launcher.extra_args += ["--log-level", "DEBUG"]
    k = launcher.keepalived("--linger", "5")  # (send's worker then names itself for 5 s)
    k.start()
    r = standby.pid(k)
    first = launcher.wait_standby()
    launcher.wait_for("the reader watching its standby", lambda: first in standby.watched_by(r))
    current, reused = first, False
    os.kill(r, signal.SIGSTOP)
    try:
        for attempt in range(12):
            os.kill(current, signal.SIGTERM)  # a normal exit: "SIGTERM: queue drained, exiting"
            launcher.wait_for("the worker gone, reaped", lambda current=current: not os.path.exists(f"/proc/{current}")
                              and not os.path.exists(f"/proc/{first}"), timeout=30)
            with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
                fh.write(str(first - 4 - attempt % 3))  # send, its fork, its session leader, the worker
            subprocess.run([LAUNCHER, "send", "--state-dir", str(launcher.state), f'INSTANCE "VI_{attempt}" MASTER 1'],
                           check=True, capture_output=True, timeout=30)
            launcher.wait_for("send's worker named", lambda current=current: _named(launcher) not in (0, current), timeout=30)
            current = _named(launcher)
            if current == first:
                reused = True
                break
    finally:
        os.kill(r, signal.SIGCONT)
    assert reused, "no worker was given the first one's pid in 12 tries"
    launcher.wait_for("R watching the new worker", lambda: first in standby.watched_by(r)
                      and f"reader[{r}] DEBUG #- - | worker pid {first} left" in launcher.log_text()
                      or f"worker pid {first} died" in launcher.log_text(), timeout=30)
    log = launcher.log_text()
    k.stop([])
    assert "SIGTERM: queue drained, exiting" in log
    assert f"reader[{r}] WARN  #- - | worker pid {first} died without finishing" not in log, "\n".join(
        line for line in log.splitlines() if f"[{r}]" in line or "SIGTERM" in line)


UNLINKS = ("87 ", "263 ")  # x86_64's unlink, unlinkat (/proc/PID/syscall)


@needs("strace, on x86_64", shutil.which("strace") is not None and os.uname().machine == "x86_64")
def test_a_send_while_a_leaving_worker_is_slow_past_its_last_look_is_run(launcher: Launcher) -> None:
    """`send` never strands its event: a worker leaving past its last look at the journal holds
    worker.lock without a doorbell for longer than send's rings (here its unlink of worker.pid, the
    step after its final re-read, held 6 s with strace; a slow disk or SIGSTOP alike).  send's last
    ring spawns a worker to queue behind it, which runs the event once the lock is free.  (Red team:
    send said "journaled as #N" and nobody ran it.)"""
    wrapper = launcher.dir / "traced.sh"
    worker_pid = str(launcher.state / "worker.pid")
    wrapper.write_text(f"#!/bin/sh\nexec strace -DDD -f -qq -o /dev/null -P '{worker_pid}' -e trace=unlink,unlinkat "
                       f"-e inject=unlink,unlinkat:delay_enter=6000000 -- {LAUNCHER} \"$@\"\n")
    wrapper.chmod(0o755)
    argv = launcher.argv("--linger", "0")
    argv[0] = str(wrapper)
    k = Keepalived(argv, str(launcher.fifo))
    launcher.standins.append(k)
    launcher.logs.append(launcher.log)
    k.start()
    worker = launcher.wait_standby()
    k.stop([])  # the reader's STOP runs; no reader lives: at linger 0 the worker leaves at once

    def past_its_last_look() -> bool:
        try:
            with open(f"/proc/{worker}/syscall") as fh:
                in_unlink = fh.read().startswith(UNLINKS)
        except OSError:
            return False
        return in_unlink and not (launcher.state / "doorbell.sock").exists()

    launcher.wait_for("the leaving worker held in its unlink of worker.pid", past_its_last_look, timeout=30)
    sent = subprocess.run([LAUNCHER, "send", "--state-dir", str(launcher.state), 'INSTANCE "VI_9" MASTER 100'],
                          capture_output=True, text=True, timeout=30)
    assert sent.returncode == 0, sent.stderr
    assert processes.running(worker), "the worker left before send returned: no race shown"
    launcher.wait_for("the sent event run", lambda: any(r.name == "VI_9" for r in launcher.records()), timeout=60)
