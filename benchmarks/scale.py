#!/usr/bin/env python3
"""Cost in the number of names and the length of history (run.py prints these rows too).

    PYTHONPATH=tests .venv/bin/python benchmarks/scale.py [--reps 3] [--events 60] [--launcher PATH]

- names: a state directory whose progress file holds what a worker leaves after serving N distinct
  names (10, 1,000, 5,000; INSTANCE, GROUP and RS mixed: each name's last end and the history, as
  the worker's own compaction policy keeps them), then `--events` events 30 ms apart through the
  stand-in, each for one of those names: the worker's CPU per event (its utime+stime over the
  events / their number) and event -> action start (the stand-in's write -> the recorder's start).
  The worker is idle between events, so each idle moment is one where it may compact.
- history: state directories after 100, 10,000 and 100,000 events (10 names, compacted as the
  worker does): `status --json` (fork to exit) and one `wait` poll after one more event
  (status.StatusReader, in process), beside a full replay of the progress file.  "Equal within
  noise": the median at N events within NOISE of the median at 100 (the spread of the reps shown).
Medians over `--reps`; every figure of one row comes from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import run  # (beside this file: the benchmark's setups: stand-in, recorder handler, cleanup by PID)
from support import recorder  # noqa: E402

from notify_launcher.history import History  # noqa: E402
from notify_launcher.ledger import KEEP_HISTORY, PROGRESS_FLOOR  # noqa: E402
from notify_launcher.progress import ProgressLog, replay  # noqa: E402
from notify_launcher.records import EndRecord, StartRecord, TryRecord  # noqa: E402
from notify_launcher.statedir import StatePaths  # noqa: E402
from notify_launcher.status import StatusReader  # noqa: E402

NAMES = (10, 1000, 5000)
HISTORY = (100, 10_000, 100_000)
NOISE = 1.15  # "equal within noise": at most this ratio of the medians


def line_of(i: int, state: str) -> tuple[str, tuple[str, str, str]]:
    """Name number `i` as keepalived writes its line: INSTANCE, GROUP, RS in turn; (line, ident).
    A real server is UP where a VRRP name would be MASTER, DOWN otherwise."""
    kind = ("INSTANCE", "GROUP", "RS")[i % 3]
    if kind == "RS":
        name, state = f"[10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}]:tcp:80", "UP" if state == "MASTER" else "DOWN"
        return f"RS {name} [10.255.0.1]:tcp:80 {state}", ("RS", name, state)
    name = f"{kind[0]}{i}"
    return f'{kind} "{name}" {state} {100 if kind == "INSTANCE" else 0}', (kind, name, state)


def write_history(path: str, events: int, names: int) -> None:
    """The progress and history files a worker leaves after `events` events over `names` names (one
    try, start and end each), compacted by the worker's own rule."""
    log, history = ProgressLog(path), History(os.path.join(os.path.dirname(path), "history"), KEEP_HISTORY)
    for seq in range(1, events + 1):
        text, (kind, name, state) = line_of(seq % names, "MASTER" if seq // names % 2 == 0 else "BACKUP")
        key, event = f"{kind} {name}", text
        log.record(TryRecord(op="try", seq=seq, worker=1))
        log.record(StartRecord(op="start", seq=seq, t=time.time(), key=key, event=event, state=state, pid=2,
                               pid_start_min=1, pid_start_max=1, worker=1, worker_start=1))
        log.record(EndRecord(op="end", seq=seq, t=time.time(), key=key, event=event, state=state, result="exit 0",
                             ok=True, duration=0.002, exit=0, signal=None, timed_out=False, worker=1))
        if log.due(PROGRESS_FLOOR):
            log.compact(history)


def worker_cpu(state: Path) -> float:
    """The worker's time on a CPU so far, s (schedstat: nanoseconds, where utime/stime count 10 ms ticks)."""
    pid = int((state / "worker.pid").read_text().split()[0])
    with open(f"/proc/{pid}/schedstat") as fh:
        return int(fh.read().split()[0]) / 1e9


def phase_names(root: Path, names: int, events: int, label: str) -> dict[str, Any]:
    setup = run.Setup(root, "launcher", f"names{names}-{label}", 0.001)
    try:
        setup.state.mkdir(mode=0o700)
        write_history(str(setup.state / "progress"), max(names, 2000), names)
        k = run.BenchKeepalived(setup.argv(), str(setup.fifo))
        setup.k = k
        k.start()
        run.wait_fifo_open(k.proc.pid, str(setup.fifo))  # type: ignore[union-attr]
        k.write(line_of(names - 1, "BACKUP")[0])
        wait_for_starts(setup, 1)
        cpu0 = worker_cpu(setup.state)
        lat = []
        for n in range(events):
            k.write(line_of(n * (names // events or 1) % names, "MASTER" if n % 2 else "BACKUP")[0])
            start = wait_for_starts(setup, n + 2)
            if start is not None:
                lat.append((start - k.writes[-1][2]) * 1000)
            time.sleep(0.03)  # idle: the worker's moment to compact
        wait_for_ends(setup, events + 1)
        cpu = worker_cpu(setup.state) - cpu0
        k.stop([])
        return {"cpu_per_event_ms": cpu / events * 1000, "latency_ms": statistics.median(lat),
                "progress_bytes": os.path.getsize(setup.state / "progress")}
    finally:
        setup.cleanup()


def wait_for_starts(setup: run.Setup, n: int, timeout: float = 30) -> float | None:
    """Wait for the n-th action start (events run one at a time, in order); its time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        starts = [r.time for r in recorder.read(setup.records_path) if r.kind == "start"]
        if len(starts) >= n:
            return starts[n - 1]
        time.sleep(0.002)
    run.anomaly(setup, f"action #{n}: not started within {timeout} s")
    return None


def wait_for_ends(setup: run.Setup, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while setup.count_ends() < n and time.monotonic() < deadline:
        time.sleep(0.01)


def phase_history(root: Path, events: int, reps: int) -> dict[str, Any]:
    state = root / f"history{events}"
    state.mkdir(mode=0o700)
    progress = str(state / "progress")
    write_history(progress, events, 10)
    status_ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([run.LAUNCHER_CMD[0], "status", "--json", "--state-dir", str(state)], check=True,
                       stdout=subprocess.DEVNULL)
        status_ms.append((time.perf_counter() - t0) * 1000)
    reader = StatusReader(StatePaths(str(state)))
    reader.read()
    log = ProgressLog(progress)
    poll_ms, replay_ms = [], []
    for seq in range(events + 1, events + 1 + max(reps, 5) * 3):
        _, (kind, name, st) = line_of(seq % 10, "MASTER")
        log.record(EndRecord(op="end", seq=seq, t=time.time(), key=f"{kind} {name}", event=name, state=st,
                             result="exit 0", ok=True))
        t0 = time.perf_counter()
        reader.read()
        poll_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        replay(progress)
        replay_ms.append((time.perf_counter() - t0) * 1000)
    reader.close()
    return {"status_json_ms": statistics.median(status_ms), "wait_poll_ms": statistics.median(poll_ms),
            "full_replay_ms": statistics.median(replay_ms), "progress_bytes": os.path.getsize(progress),
            "status_json_spread": [min(status_ms), max(status_ms)], "wait_poll_spread": [min(poll_ms), max(poll_ms)]}


def measure(reps: int, events: int, launcher: str | None = None) -> dict[str, Any]:
    """Both phases; `launcher`: the executable (run.py's --launcher: it runs this as its own copy)."""
    if launcher:
        run.LAUNCHER_CMD[0] = launcher
    root = Path(tempfile.mkdtemp(prefix="nl-scale-"))
    out: dict[str, Any] = {"names": {}, "history": {}}
    try:
        for rep in range(reps):
            for names in NAMES:
                run.log(f"scale rep {rep + 1}/{reps}: {names} names, {events} events")
                out["names"].setdefault(names, []).append(phase_names(root, names, events, f"r{rep}"))
        for events_ in HISTORY:
            run.log(f"scale: status and wait at {events_} events of history")
            out["history"][events_] = phase_history(root, events_, max(reps, 5))
    finally:
        run.processes.end_all(str(root), term_grace=3.0)
        shutil.rmtree(root, ignore_errors=True)
    for names, runs in out["names"].items():
        out["names"][names] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return out


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, bool | None]]:
    """(label, value, beside, target, met) for run.py's table and this script's."""
    n, h = res["names"], res["history"]
    small, big = n[NAMES[0]], n[NAMES[-1]]
    out: list[tuple[str, str, str, str, bool | None]] = []
    for names in NAMES:
        last = names == NAMES[-1]
        out.append((f"{names} names: worker CPU/event", f"{n[names]['cpu_per_event_ms']:.2f} ms",
                    f"10 names: {small['cpu_per_event_ms']:.2f} ms", "<= 1.5x of 10 names" if last else "",
                    big["cpu_per_event_ms"] <= 1.5 * small["cpu_per_event_ms"] if last else None))
        out.append((f"{names} names: event->action start", f"{n[names]['latency_ms']:.2f} ms",
                    f"10 names: {small['latency_ms']:.2f} ms", "<= 1.5x of 10 names" if last else "",
                    big["latency_ms"] <= 1.5 * small["latency_ms"] if last else None))
    a = h[HISTORY[0]]
    for events in HISTORY[1:]:
        b = h[events]
        for key, label, digits in (("status_json", "status --json", 1), ("wait_poll", "one wait poll", 3)):
            lo, hi = b[f"{key}_spread"]
            alo, ahi = a[f"{key}_spread"]
            out.append((f"{label}, {events} events of history",
                        f"{b[f'{key}_ms']:.{digits}f} ms ({lo:.{digits}f}-{hi:.{digits}f})",
                        f"{HISTORY[0]} events: {a[f'{key}_ms']:.{digits}f} ({alo:.{digits}f}-{ahi:.{digits}f})",
                        f"equal within noise (<= {NOISE}x)", b[f"{key}_ms"] <= NOISE * a[f"{key}_ms"]))
        out.append((f"  a full replay of the progress file: {events} events", f"{b['full_replay_ms']:.2f} ms",
                    f"{HISTORY[0]} events: {a['full_replay_ms']:.2f} ms", "", None))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions of the names phase (default 3)")
    p.add_argument("--events", type=int, default=60, help="events per names phase (default 60)")
    p.add_argument("--launcher", default=run.LAUNCHER, help="notify-launcher executable (default: this checkout's)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    args = p.parse_args(argv)
    run.use(args.launcher)
    res = measure(args.reps, args.events)
    print(f"scale ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; launcher {run.LAUNCHER_CMD[0]})")
    for label, value, beside, target, met in rows(res):
        print(f"{label:<48} {value:>24}   {beside:<30} {target:<28} {'' if met is None else 'met' if met else 'NOT MET'}")
    if args.json:
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
