"""Chaos: SIGKILL the worker and the reader at random moments of a 2,000-event burst, and fill and
free the state file system meanwhile.  Every journaled event must run, in order, never two at once,
and be re-run at most once per worker kill (on_crash = rerun); the invariants checker
(docs/invariants.md) runs at the end.

The reader is started by the test itself (keepalived never restarts its script, but a supervisor
or the next keepalived start would), and the test holds the FIFO's write end, so lines a killed
reader had not read yet wait in the pipe for the next one.  Lines a killed reader had read but not
journaled are gone with it, as anything in a SIGKILLed process's memory: the promise is about
journaled events, and numbering shows them all (sequence numbers have no gaps).

The seed is printed; NL_CHAOS_SEED=N replays a run.  Root (a tmpfs to fill); elsewhere it skips,
and under CI=true it fails without root.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from support import LAUNCHER, invariants, processes, recorder, tmpfs
from support.marks import needs
from support.waiting import wait_for

EVENTS = 2000
KILLS = 13  # planned, of the worker and of the reader each
MIN_KILLS = 10  # that must land (a worker kill finds no worker while one is starting: tried again)
FILLS = 3
SPREAD = 7.0  # seconds over which the kills and fills are spread


def _status(state: Path) -> dict[str, object]:
    out = subprocess.run([LAUNCHER, "status", "--json", "--state-dir", str(state)],
                         capture_output=True, text=True, check=True).stdout
    data: dict[str, object] = json.loads(out)
    return data


class Chaos:
    """One launcher setup on a small tmpfs, its reader restarted after every kill."""

    def __init__(self, tmp: Path, rng: random.Random) -> None:
        self.tmp, self.rng = tmp, rng
        self.state = tmp / "state"
        self.fifo = tmp / "notify.fifo"
        self.rec = tmp / "records"
        self.log = tmp / "launcher.log"
        self.handler = recorder.install(tmp / "handler.sh", records=self.rec, sleeps=tmp / recorder.SLEEPS)
        recorder.track_trees(self.rec)
        (tmp / recorder.SLEEPS).write_text(recorder.sleep_line("*", "*", 0.004))  # every action takes 4 ms
        self.filler = self.state / "filler"
        self.reader: subprocess.Popen[bytes] | None = None
        self.readers: list[subprocess.Popen[bytes]] = []
        self.kills = {"worker": 0, "reader": 0, "fill": 0}

    def start_reader(self) -> None:
        self.reader = subprocess.Popen(
            [LAUNCHER, "--handler", str(self.handler), "--state-dir", str(self.state), "--log-file",
             str(self.log), "--linger", "1", str(self.fifo)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0)
        self.readers.append(self.reader)

    def kill_reader(self) -> None:
        assert self.reader is not None
        self.reader.kill()
        self.reader.wait()
        self.kills["reader"] += 1
        time.sleep(self.rng.uniform(0, 0.05))
        self.start_reader()

    def kill_worker(self) -> bool:
        """SIGKILL the running worker; False if there is none right now.  Found in /proc, not through
        worker.pid: on a full disk a worker runs without one, and a stale one may name a zombie."""
        readers = {p.pid for p in self.readers}
        # worker.lock held: a worker still importing, or queued for the lock, is not the one whose
        # kill tests recovery
        workers = [pid for pid in self.launcher_pids() if pid not in readers and processes.ppid(pid) not in readers
                   and processes.holds_lock(pid, self.state / "worker.lock")]
        if not workers:
            return False
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.kills["worker"] += 1
        return True

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        self.kills["fill"] += 1

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def launcher_pids(self) -> set[int]:
        """Live launcher processes whose command line names this setup (readers, workers)."""
        return {pid for pid, _ in processes.scan(str(self.state))}


def _drained(state: Path) -> bool:
    """Nothing pending or running, and everything journaled done (`status --json`)."""
    st = _status(state)
    return not st["pending"] and st["running"] is None and st["last_seq"] == st["done_seq"]


def _write_lines(fd: int, first: int, count: int) -> None:
    """Lines #first.. of the burst, with blocking writes (they wait while no reader reads)."""
    for i in range(first, first + count):
        os.write(fd, f'INSTANCE "VI_{i}" {"MASTER" if i % 2 else "BACKUP"} 100\n'.encode())


def _check(records: list[recorder.Record], last_seq: int, reader_seqs: set[int],
           worker_kills: int) -> tuple[int, int]:
    """(events run, re-runs); asserts order, no overlap beyond a killed action, nothing missing."""
    seen: list[int] = []
    reruns = 0
    running: int | None = None
    for rec in records:
        seq = rec.seq
        assert seq is not None
        if rec.kind == "start":
            if seen and seq == seen[-1]:
                reruns += 1  # the interrupted event, run again before anything later
            else:
                assert not seen or seq > seen[-1], f"#{seq} started after #{seen[-1]}"
                seen.append(seq)
            running = seq
        else:
            assert running == seq, f"end of #{seq} while #{running} ran"
    expected = [s for s in range(1, last_seq + 1) if s not in reader_seqs]
    missing = sorted(set(expected) - set(seen))
    assert not missing, f"journaled but never run: {missing[:20]} ({len(missing)})"
    assert reruns <= worker_kills, f"{reruns} re-runs for {worker_kills} worker kills"
    return len(seen), reruns


@needs("root (it mounts a small tmpfs for the state directory)", os.geteuid() == 0)
def test_chaos_kills_and_a_full_disk_lose_nothing_journaled(tmp_path: Path) -> None:
    seed = int(os.environ.get("NL_CHAOS_SEED", str(time.time_ns() % 1_000_000)))
    rng = random.Random(seed)
    print(f"\nchaos seed {seed} (NL_CHAOS_SEED={seed} replays it)")
    chaos = Chaos(tmp_path, rng)
    with tmpfs.mounted(chaos.state, "4m"):
        _drive(chaos, tmp_path, rng)


def _drive(chaos: Chaos, tmp_path: Path, rng: random.Random) -> None:
    os.mkfifo(chaos.fifo, 0o600)
    wfd = os.open(chaos.fifo, os.O_RDWR | os.O_CLOEXEC)  # blocking writes: wait while no reader reads
    try:
        chaos.start_reader()
        written = EVENTS
        writer = threading.Thread(target=_write_lines, args=(wfd, 0, EVENTS), daemon=True)
        writer.start()
        plan = ["worker"] * KILLS + ["reader"] * KILLS + ["fill"] * FILLS
        rng.shuffle(plan)
        t0 = time.monotonic()
        # Spread over the drain (~5 ms an event), so kills land mid-action, between actions, mid-spawn.
        for at, what in zip(sorted(rng.uniform(0.2, SPREAD) for _ in plan), plan, strict=True):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if what == "worker":
                deadline = time.monotonic() + 2
                while not chaos.kill_worker() and time.monotonic() < deadline:
                    time.sleep(0.005)  # none has taken over yet (spawning, importing): soon
            elif what == "reader":
                chaos.kill_reader()
            else:
                chaos.fill()
                time.sleep(rng.uniform(0.1, 0.5))
                chaos.free()
        writer.join(timeout=120)
        assert not writer.is_alive(), "the readers stopped reading the FIFO"
        chaos.free()
        while chaos.kills["worker"] < MIN_KILLS:  # a slow machine: kills that found no worker, again
            _write_lines(wfd, written, 100)
            written += 100
            deadline = time.monotonic() + 10
            while not chaos.kill_worker() and time.monotonic() < deadline:
                time.sleep(0.005)
        # Every line is in the pipe or read; wait until the queue drains (a kill may still be
        # recovering: the watch re-rings with back-off), then close the FIFO: EOF ends the reader.
        wait_for("the queue to drain", lambda: _drained(chaos.state), timeout=300, poll=0.2,
                 diagnostics=lambda: json.dumps(_status(chaos.state))[:2000])
        os.close(wfd)
        wfd = -1
        assert chaos.reader is not None
        chaos.reader.wait(timeout=30)
        wait_for("the reader's EOF event to finish", lambda: _drained(chaos.state), timeout=60, poll=0.1)
        st = _status(chaos.state)
        last_seq = int(str(st["last_seq"]))
        log = chaos.log.read_text()
        reader_seqs = {int(line.split("#", 1)[1].split()[0]) for line in log.splitlines() if "READER reader" in line
                       and "#" in line and line.split("#", 1)[1][:1].isdigit()}
        records = recorder.read(chaos.rec)
        ran, reruns = _check(records, last_seq, reader_seqs, chaos.kills["worker"])
        lost_lines = written - ran
        print(f"chaos: {written} lines written, {last_seq} journaled ({len(reader_seqs)} reader events), "
              f"{ran} run in order, {reruns} re-runs; kills: worker {chaos.kills['worker']}, reader "
              f"{chaos.kills['reader']}; disk filled {chaos.kills['fill']} times; lines read by a killed reader "
              f"before journaling: {lost_lines}; journaled but lost: 0")
        assert chaos.kills["worker"] >= MIN_KILLS and chaos.kills["reader"] >= MIN_KILLS
        # Lines a killed reader held are gone with it (module docstring): no expect_lines.
        invariants.check_run(chaos.state, records_dir=tmp_path, log_file=chaos.log)
        assert "Traceback" not in log or "FAILED inside the launcher" not in log
    finally:
        if wfd >= 0:
            os.close(wfd)
        for proc in chaos.readers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        processes.end_all(str(chaos.state))
