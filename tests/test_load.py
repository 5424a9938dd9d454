"""Load: 100 instances flapping (1,000 events/s) through the stand-in; nothing lost, order kept,
memory flat.

CI runs it for NL_LOAD_SECONDS=5 (5,000 events: long enough for the worker to compact the journal
and the progress file, and to sample the memory of both processes several times); the long run is
opt-in: `NL_LOAD_SECONDS=60 .venv/bin/pytest -s tests/test_load.py`.  Every wait is on sequence
numbers and records (the journal is compacted whenever the worker keeps up, so its line count means
nothing); timeouts only turn a hang into a failure.  Figures (events, drops, drain time, RSS) are
printed (`pytest -s`), never asserted against a clock.
"""

from __future__ import annotations

import os
import time

import psutil

from support.launcher import Launcher

DURATION = float(os.environ.get("NL_LOAD_SECONDS", "5"))
INSTANCES = 100
PERIOD = 0.1  # every instance changes state every 100 ms: 1,000 events/s
SAMPLE_EVERY = 5  # ticks (0.5 s) between memory samples


def _rss(p: psutil.Process) -> int:
    """Resident memory; 0 for a process gone since it was listed (the double fork's middle one)."""
    try:
        return int(p.memory_info().rss)
    except psutil.Error:
        return 0


def test_100_instances_flapping(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    assert k.proc is not None
    reader = psutil.Process(k.proc.pid)
    written: list[str] = []
    rss: list[tuple[int, int]] = []
    t0 = time.monotonic()
    tick = 0
    while time.monotonic() - t0 < DURATION:
        for i in range(INSTANCES):
            line = f'INSTANCE "VI_{i}" {"MASTER" if (tick + i) % 2 else "BACKUP"} 100'
            if k.write(line):
                written.append(line)
        tick += 1
        if tick % SAMPLE_EVERY == 0:
            workers = [p for p in launcher.launcher_processes() if p.pid != reader.pid]
            rss.append((_rss(reader), max((_rss(w) for w in workers), default=0)))
        time.sleep(max(0.0, t0 + tick * PERIOD - time.monotonic()))
    t_written = time.monotonic()
    launcher.settle(len(written), timeout=120 + 20 * DURATION)  # a hang fails; never a speed figure
    drain = time.monotonic() - t_written
    k.stop([])  # the reader's own STOP event that follows runs no action: the records are complete
    got = launcher.starts()
    assert [g.seq for g in got] == list(range(1, len(written) + 1)), "lost, repeated or reordered events"
    assert [f'INSTANCE "{g.name}" {g.state} 100' for g in got] == written
    print(f"\nload: {len(written)} events written in {DURATION:g}s ({len(written) / DURATION:.0f}/s), "
          f"{k.dropped} dropped by a full pipe, all run in order; drain after the last write {drain:.1f}s; "
          f"reader RSS {rss[0][0] >> 10}..{max(r for r, _ in rss) >> 10} KiB, "
          f"worker RSS {rss[0][1] >> 10}..{max(w for _, w in rss) >> 10} KiB; "
          f"journal compacted {launcher.log_text().count('journal compacted')} times")
    assert k.dropped == 0
    reader_growth = max(r for r, _ in rss) - rss[0][0]
    assert reader_growth < 4 << 20, f"reader RSS grew by {reader_growth >> 10} KiB"
    worker_samples = [w for _, w in rss if w]
    assert max(worker_samples) - min(worker_samples) < 16 << 20, "worker RSS not flat"
