"""The standby worker under the interleavings nobody planned for: readers that start while the
standby starts, die without a word, leave their pid to another process, or outlive a removed state
directory; the standby killed at random steps of its hand-over (handoff.py).

Real readers (the keepalived stand-in), real double-forked workers, real signals and FIFOs; a second
reader gets a FIFO of its own, as during a keepalived reload.  Every test waits on state: what a
worker watches is read from the kernel (/proc/PID/fdinfo of its pidfds), never guessed from time.
The `launcher` fixture ends every process a test leaves (the stand-ins' command lines name its dir).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import psutil

from support import LAUNCHER, VI, processes, recorder, standby
from support.launcher import Launcher
from support.marks import needs
from support.recorder import check_order
from support.standin import Keepalived


def _has_open(pid: int, path: Path) -> bool:
    """`pid` has the file `path` open."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _reader(launcher: Launcher, name: str, linger: str = "0") -> Keepalived:
    """Another reader on the same state directory, with a FIFO of its own (a reload's next reader)."""
    return Keepalived(launcher.argv("--linger", linger), str(launcher.dir / f"{name}.fifo"))


def _action_workers(launcher: Launcher) -> list[int]:
    """The worker pid of every action start, from the progress records."""
    lines = (launcher.state / "progress").read_text().splitlines()
    return [rec["worker"] for rec in map(json.loads, lines) if rec.get("op") == "start"]


def _hold_worker_lock(launcher: Launcher) -> int:
    """Hold worker.lock (in a state directory made here) until the returned descriptor is closed:
    taken by a process that then exits, so that /proc/locks names no living holder, as while no
    worker holds it.  A worker spawned meanwhile waits at step (2) of handoff.py, holding
    standby.lock: the window of its fork and imports, held open."""
    launcher.state.mkdir(mode=0o700)
    lock = os.open(launcher.state / "worker.lock", os.O_RDWR | os.O_CREAT, 0o600)
    subprocess.run([sys.executable, "-c", f"import fcntl; fcntl.flock({lock}, fcntl.LOCK_EX)"],
                   pass_fds=[lock], check=True)
    return lock


def test_a_reader_that_starts_while_the_standby_starts_is_stood_by_for(launcher: Launcher) -> None:
    """R2 starts while R1's standby holds standby.lock but does not listen yet (its fork and imports):
    R2's ring finds nobody and may not spawn.  The standby must still learn of R2, or it leaves with
    R1 and R2 is left without one.

    The window is held open (_hold_worker_lock), and R2 finds no lock holder to watch, exactly as
    while the standby imports."""
    lock = _hold_worker_lock(launcher)
    try:
        k1 = launcher.keepalived("--linger", "0")
        k1.start()
        launcher.wait_for("R1's standby queued on worker.lock", lambda: "waiting for the worker lock" in launcher.log_text())
        k2 = _reader(launcher, "r2")
        k2.start()
        launcher.wait_for("R2's ring finding standby.lock held",
                          lambda: _has_open(standby.pid(k2), launcher.state / "standby.lock"))
    finally:
        os.close(lock)  # the standby takes worker.lock now and listens
    launcher.wait_for("the standby watching R1", lambda: standby.stood_by_for(launcher, standby.pid(k1)))
    first = standby.worker(launcher)
    k1.stop([])
    launcher.wait_for("a standby watching R2 after R1 left", lambda: standby.stood_by_for(launcher, standby.pid(k2)),
                      timeout=30)
    k2.write(VI.format("MASTER"))
    launcher.settle(2)  # R1's STOP record, then MASTER
    assert _action_workers(launcher) == [first]


def test_the_reader_killed_while_its_standby_starts_its_event_runs_and_the_standby_leaves(
        launcher: Launcher) -> None:
    """R1 journals an event and is SIGKILLed while the standby it spawned waits for worker.lock: the
    standby runs the event (its hello goes nowhere), stands by for no dead reader, and leaves after
    linger (0); a reader started later is served."""
    lock = _hold_worker_lock(launcher)
    try:
        k1 = launcher.keepalived("--linger", "0")
        k1.start()
        launcher.wait_for("the standby queued on worker.lock", lambda: "waiting for the worker lock" in launcher.log_text())
        k1.write(VI.format("MASTER"))
        launcher.wait_for("#1 journaled", lambda: launcher.last_seq() >= 1)
        os.kill(standby.pid(k1), signal.SIGKILL)
        assert k1.proc is not None
        k1.proc.wait()
    finally:
        os.close(lock)
    launcher.settle(1)
    [ran] = _action_workers(launcher)
    launcher.wait_for("the standby gone", lambda: not processes.running(ran), timeout=30)
    k2 = _reader(launcher, "r2")
    k2.start()
    k2.write(VI.format("BACKUP"))
    launcher.settle(2)
    started, problems = check_order(launcher.records())
    assert started == [1, 2] and problems == 0


@needs("root (it gives a dead reader's pid to a new process through /proc/sys/kernel/ns_last_pid)",
       os.geteuid() == 0)
def test_a_dead_readers_pid_taken_by_another_process_does_not_keep_the_worker(launcher: Launcher) -> None:
    """R2 rings while the worker runs a long action, then is SIGKILLed, and an unrelated process gets
    its pid before the worker reads the ring: the worker must not stand by for that process."""
    gate = launcher.dir / "gate"
    (launcher.dir / recorder.SLEEPS).write_text(recorder.sleep_line("*", "MASTER", 0, gate))
    k1 = launcher.keepalived("--linger", "0")
    k1.start()
    worker = launcher.wait_standby()
    k1.write(VI.format("MASTER"))
    launcher.wait_for("the action of #1", lambda: launcher.starts())
    k2 = _reader(launcher, "r2")
    k2.start()
    launcher.wait_for("R2's ring, delivered (R2 then watches the worker)", lambda: worker in standby.watched_by(standby.pid(k2)))
    impostor = _killed_and_pid_reused(k2, launcher.dir)
    k1.stop([])  # the last reader leaves
    gate.touch()  # the worker reads R2's ring only now
    _leaves_despite(worker, impostor)


@needs("root (it gives a dead reader's pid to a new process through /proc/sys/kernel/ns_last_pid)",
       os.geteuid() == 0)
def test_a_spawners_pid_taken_by_another_process_before_its_standby_starts_does_not_keep_it(
        launcher: Launcher) -> None:
    """R1 spawns its standby, which queues on worker.lock (held here: another worker's long action),
    and is SIGKILLed; an unrelated process gets R1's pid before the standby starts.  The standby
    learns its spawner's pid at the fork, not by a ring, and must check that pid's start time too."""
    lock = _hold_worker_lock(launcher)
    try:
        k1 = launcher.keepalived("--linger", "0")
        k1.start()
        launcher.wait_for("R1's standby queued on worker.lock", lambda: "waiting for the worker lock" in launcher.log_text())
        queued = int(re.findall(r"worker\[(\d+)\] .*waiting for the worker lock", launcher.log_text())[0])
        impostor = _killed_and_pid_reused(k1, launcher.dir)
    finally:
        os.close(lock)  # the standby takes worker.lock now
    _leaves_despite(queued, impostor)


def _killed_and_pid_reused(k: Keepalived, mark: Path) -> subprocess.Popen[bytes]:
    """SIGKILL reader `k` and give its pid to a new, unrelated process, as pid reuse would."""
    pid = standby.pid(k)
    os.kill(pid, signal.SIGKILL)
    assert k.proc is not None
    k.proc.wait()
    return processes.with_pid(pid, mark)


def _leaves_despite(worker: int, impostor: subprocess.Popen[bytes]) -> None:
    """No reader lives (linger 0): `worker` must leave, not stand by for the process with a dead reader's pid."""
    try:
        psutil.Process(worker).wait(timeout=30)
    except psutil.TimeoutExpired:
        raise AssertionError(f"worker {worker} stands by for pid {impostor.pid}, now {impostor.args}: "
                             f"it watches {standby.watched_by(worker)}") from None
    assert processes.running(impostor.pid)


def test_a_worker_whose_state_directory_was_replaced_leaves_the_new_doorbell_alone(launcher: Launcher) -> None:
    """rm -rf of the state directory while W1 stands by: R1 makes it again and spawns W2.  When R1
    leaves, W1 (lingering in the removed directory) must not take over the new doorbell.sock on its
    way out: that is W2's, which stands by for R2, and a reader started next must reach W2."""
    k1 = launcher.keepalived("--linger", "0")
    k1.start()
    old = launcher.wait_standby()
    shutil.rmtree(launcher.state)
    k1.write(VI.format("BACKUP"))
    launcher.settle(1)
    new = standby.worker(launcher)
    assert new not in (0, old)
    k2 = _reader(launcher, "r2")
    k2.start()
    launcher.wait_for("W2 watching R1 and R2", lambda: standby.stood_by_for(launcher, standby.pid(k1), standby.pid(k2)))
    k1.stop([])
    psutil.Process(old).wait(timeout=30)  # it watched R1 only: it leaves
    assert standby.stood_by_for(launcher, standby.pid(k2)), "W1 took W2's doorbell with it"
    k3 = _reader(launcher, "r3")
    k3.start()
    k3.write(VI.format("MASTER"))
    launcher.settle(3)  # BACKUP, R1's STOP, MASTER
    assert _action_workers(launcher) == [new, new]


def test_readers_sigkilled_without_a_record_the_worker_idles_at_zero_cpu_then_leaves(launcher: Launcher) -> None:
    """R2 is SIGKILLed (no STOP or RELOAD record) while the worker runs an action, so its pidfd and
    R1's ring are ready at once when the action ends; the worker then stands by for R1 at 0.00 s CPU
    (no loop on a readable pidfd).  R1 SIGKILLed too: the worker leaves after `linger` (0), and a
    reader started later is served."""
    gate = launcher.dir / "gate"
    (launcher.dir / recorder.SLEEPS).write_text(recorder.sleep_line("*", "MASTER", 0, gate))
    k1, k2 = launcher.keepalived("--linger", "0"), _reader(launcher, "r2")
    k1.start()
    k2.start()
    launcher.wait_for("a standby watching R1 and R2", lambda: standby.stood_by_for(launcher, standby.pid(k1), standby.pid(k2)))
    worker = psutil.Process(standby.worker(launcher))
    k1.write(VI.format("MASTER"))
    launcher.wait_for("the action of #1", lambda: launcher.starts())
    os.kill(standby.pid(k2), signal.SIGKILL)
    k1.write(VI.format("BACKUP"))
    launcher.wait_for("#2 journaled", lambda: launcher.last_seq() >= 2)
    gate.touch()
    launcher.settle(2)
    launcher.wait_for("the worker forgetting R2", lambda: standby.watched_by(worker.pid) == {standby.pid(k1)})
    # The measuring window is a wall-clock nap, but nothing depends on its length: an idle worker
    # uses no clock tick in any time, and one spinning on a pidfd uses many in 0.5 s, busy cores or not.
    before = worker.cpu_times()
    time.sleep(0.5)
    after = worker.cpu_times()
    assert (after.user + after.system) - (before.user + before.system) == 0.0, "the standby spins"
    os.kill(standby.pid(k1), signal.SIGKILL)
    worker.wait(timeout=30)  # no reader lives: it leaves after linger 0 (raises if it stays)
    k3 = _reader(launcher, "r3")
    k3.start()
    k3.write(VI.format("FAULT"))
    launcher.settle(3)
    started, problems = check_order(launcher.records())
    assert started == [1, 2, 3] and problems == 0


def _others(launcher: Launcher, readers: set[int]) -> list[int]:
    """Launcher processes of this setup that are not `readers`: workers, and a worker's parent
    between its two forks."""
    return [p.pid for p in launcher.launcher_processes() if p.pid not in readers]


def test_the_standby_killed_at_random_steps_of_its_start_loses_and_strands_nothing(launcher: Launcher) -> None:
    """Two readers live; each time a worker appears, an event is written (racing its start) and the
    worker (or its parent between the forks) is SIGKILLed at a step chosen at random -- just forked,
    holding worker.lock (before or after its hello), named in worker.pid, standing by -- a few ms
    after the step is seen.  The readers must notice every death by themselves (no event follows the
    last kill): every event runs, in order, re-run at most once per kill, and a standby watches both
    readers.  The seed is printed; NL_STANDBY_SEED=N replays a run."""
    seed = int(os.environ.get("NL_STANDBY_SEED", random.randrange(1 << 30)))
    print(f"NL_STANDBY_SEED={seed}")
    rng = random.Random(seed)
    k1, k2 = launcher.keepalived("--linger", "0"), _reader(launcher, "r2")
    k1.start()
    k2.start()
    readers = {standby.pid(k1), standby.pid(k2)}
    lock = launcher.state / "worker.lock"
    steps: dict[str, Callable[[], object]] = {
        "forked": lambda: True,
        "locked": lambda: any(processes.holds_lock(pid, lock) for pid in _others(launcher, readers)),
        "named": lambda: standby.worker(launcher) in _others(launcher, readers),
        "standing by": lambda: standby.stood_by_for(launcher, *readers),
    }
    kills = 0
    for n in range(1, 13):
        launcher.wait_for("a worker starting", lambda: _others(launcher, readers))
        (k1 if n % 2 else k2).write(f'INSTANCE "VI_{n}" MASTER 100')
        step = rng.choice(sorted(steps))
        launcher.wait_for(f"a worker {step}", steps[step])
        time.sleep(rng.uniform(0, 0.01))  # a random moment after the step: a schedule, not a condition
        for pid in _others(launcher, readers):
            os.kill(pid, signal.SIGKILL)
            kills += 1
    launcher.settle(12)
    launcher.wait_for("a standby watching both readers", lambda: standby.stood_by_for(launcher, *readers))
    seqs = [r.seq for r in launcher.starts()]
    once = [s for i, s in enumerate(seqs) if i == 0 or s != seqs[i - 1]]
    assert once == list(range(1, 13)), f"seed {seed}: actions ran as {seqs}"
    assert len(seqs) - len(once) <= kills


def test_sends_racing_the_workers_linger_expiry_run_once_in_order(launcher: Launcher) -> None:
    """No reader lives and linger is 0: every worker leaves the moment its queue is empty, so each
    `send --state-dir` (which journals, rings, and spawns when nobody answers) races the worker's
    close-then-re-read (handoff.py).  Two senders at once: every event runs once, in order, never
    two at once, and no worker stays once the senders are gone."""
    k = launcher.keepalived("--linger", "0")
    k.start()
    launcher.wait_standby()
    k.stop([])  # settings.json stays: `send` uses it
    launcher.settle(1)
    senders = []
    for n in range(2, 18, 2):
        senders = [subprocess.Popen([LAUNCHER, "send", "--state-dir", str(launcher.state),
                                     f'INSTANCE "VI_{n + i}" MASTER 100'], stdout=subprocess.DEVNULL)
                   for i in range(2)]
        for s in senders:
            assert s.wait() == 0
    launcher.settle(17)
    started, problems = check_order(launcher.records())
    assert started == list(range(2, 18)) and problems == 0
    launcher.wait_for("every worker gone", lambda: not launcher.launcher_processes())


def test_linger_inf_the_worker_stands_by_once_no_reader_lives(launcher: Launcher) -> None:
    """`linger = inf` (accepted by the config: "stay for ever") once the last reader is gone: the
    worker computes a deadline at infinity and must keep standing by, not crash on it; a reader
    started later is served by the same worker."""
    k1 = launcher.keepalived("--linger", "inf")
    k1.start()
    launcher.wait_for("a standby watching R1", lambda: standby.stood_by_for(launcher, standby.pid(k1)))
    worker = standby.worker(launcher)
    k1.stop([])
    launcher.wait_for("the worker forgetting R1", lambda: not standby.watched_by(worker))
    launcher.settle(1)  # R1's STOP record
    assert processes.running(worker), f"the worker left or died:\n{launcher.log_text()[-2000:]}"
    k2 = _reader(launcher, "r2", linger="inf")
    k2.start()
    k2.write(VI.format("MASTER"))
    launcher.settle(2)
    assert _action_workers(launcher) == [worker]
    assert "worker failed" not in launcher.log_text()


def test_two_readers_starting_at_once_with_no_worker_both_get_the_standby(launcher: Launcher) -> None:
    """A reload's two readers (or two keepalived starts) ring at the same moment while no worker
    lives: one spawns the standby, the other finds standby.lock held.  Both must end up watched by
    the standby.  Several rounds, each ending with both readers SIGKILLed and the worker gone."""
    for n in range(3):
        k1, k2 = _reader(launcher, f"a{n}"), _reader(launcher, f"b{n}")
        k1.start()
        k2.start()
        launcher.wait_for(f"round {n}: a standby watching both readers",
                          partial(standby.stood_by_for, launcher, standby.pid(k1), standby.pid(k2)), timeout=30)
        worker = psutil.Process(standby.worker(launcher))
        for k in (k1, k2):
            os.kill(standby.pid(k), signal.SIGKILL)
            assert k.proc is not None
            k.proc.wait()
        worker.wait(timeout=30)  # no reader lives: it leaves after linger 0


def test_a_standby_killed_under_two_readers_is_reported_once_by_each(launcher: Launcher) -> None:
    """Both readers notice the SIGKILLed standby and ring again; whichever finds the replacement
    still starting (worker.pid still names the dead one) must not report the same death again."""
    k1, k2 = launcher.keepalived("--linger", "0"), _reader(launcher, "r2")
    k1.start()
    k2.start()
    launcher.wait_for("a standby watching both readers", lambda: standby.stood_by_for(launcher, standby.pid(k1), standby.pid(k2)))
    dead = standby.worker(launcher)
    os.kill(dead, signal.SIGKILL)
    launcher.wait_for("a new standby watching both readers",
                      lambda: standby.worker(launcher) != dead and standby.stood_by_for(launcher, standby.pid(k1), standby.pid(k2)))
    log = launcher.log_text()
    for reader in (standby.pid(k1), standby.pid(k2)):
        reports = log.count(f"reader[{reader}] WARN  #- - | worker pid {dead} died without finishing")
        assert reports == 1, f"reader {reader} reported the death of {dead} {reports} times:\n{log[-3000:]}"


def test_a_reader_that_woke_a_worker_whose_socket_was_removed_is_stood_by_for(launcher: Launcher) -> None:
    """doorbell.sock is removed under the standby; a second reader starts: its ring finds no socket,
    so it wakes the worker holding worker.lock (which binds a new one), but that wake names nobody.
    The reader must ring again until the worker has heard it, or the standby never watches it (and
    leaves once the first reader is gone, however long the second lives)."""
    k1, k2 = launcher.keepalived("--linger", "0"), _reader(launcher, "second")
    k1.start()
    worker = launcher.wait_standby()
    launcher.wait_for("the standby watching the first reader", partial(standby.stood_by_for, launcher, standby.pid(k1)))
    (launcher.state / "doorbell.sock").unlink()
    k2.start()
    launcher.wait_for("the second reader's start", lambda: f"reader[{standby.pid(k2)}] INFO  #- - | reader started"
                      in launcher.log_text())
    launcher.wait_for("a standby watching both readers", partial(standby.stood_by_for, launcher, standby.pid(k1), standby.pid(k2)),
                      timeout=30)
    assert standby.worker(launcher) == worker
    k2.stop([])
    k1.stop([])


def test_a_reader_whose_worker_queued_behind_one_that_binds_its_doorbell_late_is_stood_by_for(
        launcher: Launcher) -> None:
    """A second reader finds doorbell.sock refusing (a worker's socket not yet bound anew: the CI run
    where two readers rang while a killed standby's replacement was starting), spawns its own worker
    -- queued behind worker.lock, which the standby holds -- and has rung nobody.  Once the standby
    listens again it must still hear that reader (ring again until a worker heard us), or it never
    watches it and, at linger 0, leaves with the first reader while the second lives on."""
    k1, k2, worker = standby.second_reader_queued_behind(launcher)  # (it waits for both to be stood by for)
    assert standby.worker(launcher) == worker
    k2.stop([])
    k1.stop([])
