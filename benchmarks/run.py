#!/usr/bin/env python3
"""notify-launcher vs the hand-written bash reader, both driven by the keepalived stand-in, in one run.

    PYTHONPATH=tests .venv/bin/python benchmarks/run.py [--quick] [--json]    # from the checkout

Sides (each rep starts fresh setups in a temp dir; the side that goes first alternates per rep):
  launcher  bin/notify-launcher --handler H --state-dir D/state --log-file D/launcher.log FIFO
            (default settings otherwise: linger 600 s, stop_grace 0.5 s)
  baseline  benchmarks/baseline-reader.sh D/lock H FIFO
            = while read line; do setsid flock LOCK H $line & done < FIFO   (+ keepalived's sample TERM trap)
Both run the same action H: the tests' recorder (tests/support/recorder.py: bash, no fork for its
clock, $EPOCHREALTIME) that appends "start SEQ TIME ARGS" and "end SEQ TIME ARGS" around a 1 ms nap
(`read -t` on an unwritten FIFO; SEQ is "-" on the baseline's side, which sets no NL_SEQ).
PYTHONPATH=tests puts that package, `support`, on the path (as pytest's configuration does).

Measured (medians over the reps; bounds that must hold every time are judged on the max):
  idle      event -> action start latency with events 200 ms apart (steady state: the launcher's
            worker lingers on its doorbell, only the first event of a fresh launcher forks it -- that
            one is reported apart as "cold"); "own share" = latency - the latency of the same
            handler spawned directly with subprocess by this process, measured in the same rep.
  burst     2,000 lines over 10 instances written back to back the way keepalived writes (one
            non-blocking write each, a full pipe drops the line) into a warm setup (one event run
            before); dropped, lost (written, never started), inversions (an action that starts after
            an action of an event written later: per instance and globally), overlaps (an action
            starting while another runs), drain time (first write -> last action end) and overhead
            per event = (drain - sum of the actions' own start->end time) / events.
  stop      the stand-in's stop(): SIGTERM, STOP lines 5 ms later; the reader's exit measured from
            the last STOP line; were the STOP lines' actions run.
  resources processes of the setup alive at the burst's peak (cmdline contains the setup's temp
            dir; the handler's own processes excluded), reader RSS, reader CPU over an idle period.
  real      (root; not with --host-only) failover.py's and systemd_states.py's results, each run as a
            script of its own: real keepalived and a real systemd, launcher beside the shell reader.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from support import LAUNCHER, ROOT, processes, realka, recorder
from support.standin import Keepalived, StopReport
from support.systemd import harness

import scale  # noqa: E402  (beside this file; it imports this module back for its setups)

LAUNCHER_CMD = [LAUNCHER]  # --launcher replaces it (A/B runs against another checkout): use()


def use(launcher: str) -> None:
    """Measure `launcher` as keepalived runs an installed one: with its package's bytecode up to date
    (a package install leaves .pyc; a checkout's may be stale after an edit) and without
    PYTHONDONTWRITEBYTECODE, which keepalived's environment does not set: with it and a stale .pyc
    every start compiles the package again (~40 ms of a first event's wait)."""
    LAUNCHER_CMD[0] = os.path.abspath(launcher)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    top = os.path.dirname(os.path.dirname(os.path.realpath(launcher)))
    python = os.path.join(top, ".venv", "bin", "python")
    if os.path.isdir(os.path.join(top, "notify_launcher")):
        subprocess.run([python if os.access(python, os.X_OK) else sys.executable, "-m", "compileall", "-q",
                        os.path.join(top, "notify_launcher")], check=True, stdout=subprocess.DEVNULL)
METRICS = [False]  # --metrics: the launcher writes a metrics file (what that costs per event)
BASELINE = str(ROOT / "benchmarks" / "baseline-reader.sh")
SIDES = ("launcher", "baseline")

# The nap of the one action both sides run (the recorder's `then`): a read that times out, no fork.
# The records and the nap FIFO are beside the script (${0%/*}), so each setup records into its own
# file with byte-identical handler text.
NAP = 'read -t {nap} <> "${{0%/*}}/nap"'

Ident = tuple[str, str, str, str]  # TYPE NAME STATE PRIORITY, quotes stripped
ANOMALIES: list[str] = []  # anything unexpected: reported, and the temp dir is kept for a look


def anomaly(setup: Setup, what: str) -> None:
    ANOMALIES.append(f"{setup.dir.name}: {what}")
    log(f"ANOMALY {setup.dir.name}: {what}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ident_of_line(line: str) -> Ident:
    t, name, state, prio = line.split()
    return t, name.strip('"'), state, prio


# --------------------------------------------------------------------------------------------- setups

class BenchKeepalived(Keepalived):
    """The stand-in, plus the moment of every write and of the SIGTERM (for latencies)."""

    def __init__(self, script: list[str], fifo: str) -> None:
        super().__init__(script, fifo)
        self.writes: list[tuple[str, bool, float, float]] = []  # line, written, wall, monotonic
        self.term_mono: float | None = None

    def write(self, line: str) -> bool:
        wall, mono = time.time(), time.monotonic()
        ok = super().write(line)
        self.writes.append((line, ok, wall, mono))
        return ok

    def _term_then_kill(self):  # type: ignore[no-untyped-def]
        self.term_mono = time.monotonic()
        return super()._term_then_kill()


@dataclass
class Setup:
    """One side's files in its own directory: FIFO, handler, records, state, log, lock."""

    root: Path
    side: str
    label: str
    nap: float
    extra: list[str] = field(default_factory=list)  # more launcher options (e.g. --linger 1)
    dir: Path = field(init=False)
    k: BenchKeepalived | None = None

    def __post_init__(self) -> None:
        self.dir = self.root / f"{self.side}-{self.label}"
        self.dir.mkdir(parents=True)
        self.handler = recorder.install(self.dir / "handler.sh", then=NAP.format(nap=f"{self.nap:.4f}"))
        os.mkfifo(self.dir / "nap", 0o600)
        self.records_path = self.dir / recorder.RECORDS
        self.fifo = self.dir / "notify.fifo"
        self.state = self.dir / "state"
        self.logfile = self.dir / "launcher.log"
        self.lock = self.dir / "lock"

    def argv(self) -> list[str]:
        if self.side == "launcher":
            metrics = ["--metrics-file", str(self.dir / "metrics.prom")] if METRICS[0] else []
            return [LAUNCHER_CMD[0], "--handler", str(self.handler), "--state-dir", str(self.state),
                    "--log-file", str(self.logfile), *metrics, *self.extra]
        return [BASELINE, str(self.lock), str(self.handler)]

    def start(self) -> BenchKeepalived:
        self.k = BenchKeepalived(self.argv(), str(self.fifo))
        self.k.start()
        wait_fifo_open(self.k.proc.pid, str(self.fifo))  # type: ignore[union-attr]
        return self.k

    @property
    def reader_pid(self) -> int:
        assert self.k is not None and self.k.proc is not None
        return self.k.proc.pid

    def records(self) -> list[tuple[str, float, Ident]]:
        """(start|end, time, ident) in file order; NAME without the quotes the baseline leaves on it."""
        return [(r.kind, r.time, (r.type, r.name.strip('"'), r.state, r.priority))
                for r in recorder.read(self.records_path)
                if r.kind in ("start", "end") and r.time is not None and len(r.args) == 4]

    def count_ends(self) -> int:
        try:
            return self.records_path.read_bytes().count(b"end ")
        except FileNotFoundError:
            return 0

    def processes(self) -> list[tuple[int, list[str]]]:
        """Launcher-side processes: cmdline names this setup's dir, not the handler itself."""
        return [(pid, args) for pid, args in processes.scan(str(self.dir))
                if not (args[:1] == [str(self.handler)] or args[1:2] == [str(self.handler)])]

    def cleanup(self) -> None:
        processes.end_all(str(self.dir), term_grace=3.0)


def wait_fifo_open(pid: int, fifo: str, timeout: float = 15) -> None:
    """The reader is ready when it holds the FIFO open (Python's imports take a while)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == fifo:
                        return
                except OSError:
                    pass
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"reader {pid} did not open {fifo} within {timeout}s")


def wait_started(setup: Setup, ident: Ident, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(k == "start" and i == ident for k, _, i in setup.records()):
            return True
        time.sleep(0.01)
    return False


class Sampler(threading.Thread):
    """The setup's processes and the reader's peak RSS, sampled while something runs.

    Adaptive: sleeps 5 ms or 5x the last /proc scan, whichever is longer, so it never takes more
    than ~1/6 of a core from what it measures (a scan of the baseline's 2,000 flock jobs is slow).
    Every sample is kept, so that a process later known to be a handler (the launcher worker's
    child between fork and exec still shows the worker's cmdline) can be left out afterwards.
    Parents are recorded while a sample has at most 10 processes (always, for the launcher)."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(daemon=True)
        self.setup, self.stop_ev = setup, threading.Event()
        self.samples: list[list[tuple[int, list[str]]]] = []
        self.peak_rss = 0
        self.ppids: dict[int, int] = {}
        self.workers: set[int] = set()  # launcher workers seen (worker.pid)
        self.reader = psutil.Process(setup.reader_pid)

    def sample(self) -> float:
        t = time.perf_counter()
        procs = self.setup.processes()
        self.samples.append(procs)
        if self.setup.side == "launcher":
            try:
                self.workers.add(int((self.setup.state / "worker.pid").read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        if len(procs) <= 10:  # who is whose child, for the peak's description (not for 2,000 flock jobs)
            for pid, _ in procs:
                self.ppids.setdefault(pid, processes.ppid(pid))
        try:
            self.peak_rss = max(self.peak_rss, self.reader.memory_info().rss)
        except psutil.Error:
            pass
        return time.perf_counter() - t

    def run(self) -> None:
        while not self.stop_ev.is_set():
            spent = self.sample()
            self.stop_ev.wait(max(0.005, 5 * spent))

    def finish(self) -> None:
        self.stop_ev.set()
        self.join()

    def actions(self) -> set[int]:
        """Children of a launcher worker that still show its cmdline: actions between fork and exec
        (the worker forks nothing else).  The progress file names actions too, until it is compacted."""
        return {pid for pid, ppid in self.ppids.items() if ppid in self.workers and pid not in self.workers}

    def peak(self, exclude: set[int] | frozenset[int] = frozenset()) -> tuple[int, list[tuple[int, list[str]]]]:
        best: list[tuple[int, list[str]]] = []
        for procs in self.samples:
            kept = [(pid, args) for pid, args in procs if pid not in exclude]
            if len(kept) > len(best):
                best = kept
        return len(best), best


def describe(detail: list[tuple[int, list[str]]], ppids: dict[int, int], setup: Setup) -> list[str]:
    """'pid ppid=N argv...' with the temp dir shortened, for the JSON report."""
    return [f"{pid} ppid={ppids.get(pid, '?')} " + " ".join(args[:4]).replace(str(setup.dir), "<dir>")
            for pid, args in detail]


def action_pids(setup: Setup) -> set[int]:
    """PIDs of the launcher's actions (progress 'start' records): the worker's children."""
    try:
        text = (setup.state / "progress").read_text()
    except FileNotFoundError:
        return set()
    pids = set()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            if rec.get("op") == "start":
                pids.add(int(rec["pid"]))
        except (ValueError, KeyError, TypeError):
            pass
    return pids


def summarize_peak(detail: list[tuple[int, list[str]]]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for _, args in detail:
        k = os.path.basename(args[0]) if args else "?"
        if k.startswith("python"):
            k = "python (notify-launcher)"
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def stop_and_measure(setup: Setup, stop_lines: list[str]) -> dict[str, Any]:
    """keepalived's stop; exit time from the last STOP line; did the STOP lines' actions run."""
    k = setup.k
    assert k is not None
    n_before = len(k.writes)
    report: StopReport = k.stop(stop_lines)
    assert k.term_mono is not None
    exited = k.term_mono + report.exit_after
    stop_writes = [w for w in k.writes[n_before:] if w[1]]
    last_stop = stop_writes[-1][3] if stop_writes else k.term_mono
    want = [ident_of_line(w[0]) for w in stop_writes]
    deadline = time.monotonic() + 3.0
    while True:
        started = {i for kind, _, i in setup.records() if kind == "start"}
        got = sum(1 for i in want if i in started)
        if got == len(want) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return {"exit_after_term_ms": report.exit_after * 1000, "exit_after_last_stop_ms": (exited - last_stop) * 1000,
            "killed": report.killed, "stop_lines": len(stop_lines), "stop_lines_written": len(want),
            "stop_actions_run": got}


# --------------------------------------------------------------------------------------------- phases

def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))]


def phase_direct(root: Path, label: str, n: int, spacing: float, nap: float) -> dict[str, Any]:
    """The handler spawned directly (subprocess from this process): start latency when idle, and
    the wall time of one run back to back (spawn -> exit reaped)."""
    setup = Setup(root, "direct", label, nap)
    lat = []
    for i in range(n):
        t0 = time.time()
        subprocess.Popen([str(setup.handler), "INSTANCE", "VD", "MASTER", str(i)]).wait()
        start = next(ts for kind, ts, ident in setup.records() if kind == "start" and ident[3] == str(i))
        lat.append((start - t0) * 1000)
        time.sleep(spacing)
    walls = []
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for i in range(n, n + 100):
        t0 = time.perf_counter()
        subprocess.run([str(setup.handler), "INSTANCE", "VD", "BACKUP", str(i)])
        walls.append((time.perf_counter() - t0) * 1000)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / 100 * 1000
    own = [e[1] - s[1] for s, e in zip(setup.records()[2 * n::2], setup.records()[2 * n + 1::2], strict=False)]
    return {"latency_ms_median": statistics.median(lat), "latency_ms_p99": percentile(lat, 99),
            "run_wall_ms_median": statistics.median(walls), "run_cpu_ms_mean": cpu,
            "run_own_ms_median": statistics.median(own) * 1000 if own else None}


def phase_idle(root: Path, side: str, label: str, n: int, spacing: float, nap: float) -> dict[str, Any]:
    setup = Setup(root, side, label, nap)
    try:
        k = setup.start()
        time.sleep(0.3)  # the launcher finishes its setup after opening the FIFO
        sampler = Sampler(setup)
        sampler.start()
        cold_line = 'GROUP "G1" BACKUP 0'
        k.write(cold_line)
        if not wait_started(setup, ident_of_line(cold_line), 15):
            anomaly(setup, "the first event's action did not start within 15 s")
        time.sleep(0.3)
        sampler.finish()
        cold_peak, cold_detail = sampler.peak(action_pids(setup) | sampler.actions())
        time.sleep(spacing)
        lines = [f'INSTANCE "VI_1" {"MASTER" if i % 2 else "BACKUP"} {i}' for i in range(n)]
        for line in lines:
            k.write(line)
            time.sleep(spacing)
        reader = psutil.Process(setup.reader_pid)
        rss = reader.memory_info().rss
        others = {}
        for pid, _ in setup.processes():
            if pid != setup.reader_pid:
                try:
                    others[pid] = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    pass
        stop = stop_and_measure(setup, ['INSTANCE "VI_1" STOP 255', 'GROUP "G1" STOP 0'])
        starts = {i: ts for kind, ts, i in setup.records() if kind == "start"}
        writes = {ident_of_line(line): wall for line, ok, wall, _ in k.writes if ok}
        cold_id = ident_of_line(cold_line)
        cold = (starts[cold_id] - writes[cold_id]) * 1000 if cold_id in starts and cold_id in writes else None
        lat = [(starts[ident_of_line(line)] - writes[ident_of_line(line)]) * 1000
               for line in lines if ident_of_line(line) in starts and ident_of_line(line) in writes]
        if len(lat) < n:
            anomaly(setup, f"{n - len(lat)} of {n} idle events' actions never started")
        out: dict[str, Any] = {
            "events": n, "missing": n - len(lat), "cold_ms": cold,
            "latency_ms_median": statistics.median(lat) if lat else None,
            "latency_ms_p99": percentile(lat, 99) if lat else None,
            "latency_ms_max": max(lat) if lat else None, "reader_rss_mb": rss / 2**20,
            "other_rss_mb": {str(p): r / 2**20 for p, r in others.items()},
            "cold_start_peak_processes": cold_peak,
            "cold_start_peak_kinds": summarize_peak(cold_detail),
            "cold_start_peak_detail": describe(cold_detail, sampler.ppids, setup) if len(cold_detail) <= 10 else None,
            "stop": stop}
        if side == "launcher":
            try:
                out["breakdown"] = launcher_breakdown(setup, lines, writes, starts)
            except (OSError, ValueError, KeyError, IndexError, statistics.StatisticsError) as exc:
                out["breakdown"] = {"error": f"{type(exc).__name__}: {exc}"}  # journal/progress format changed?
        return out
    finally:
        setup.cleanup()


def phase_states(root: Path, side: str, label: str, nap: float, idle_events: int = 3) -> dict[str, Any]:
    """Event -> action start in the states where a worker used to be missing (issue 11):
      start        the first line written the moment the script is started, as keepalived writes
                   its first BACKUP lines (so the reader's own start-up is in it);
      past linger  `--linger 1`, one warm event, then `idle_events` events each after 1.6 s idle
                   (longer than linger: a worker that lingers only `linger` is gone by then);
      reload       the stand-in's reload (TERM + EOF, a new FIFO and script ~20 ms later); the first
                   line once the new reader holds the FIFO."""
    setup = Setup(root, side, label, nap, extra=["--linger", "1"])
    try:
        k = BenchKeepalived(setup.argv(), str(setup.fifo))
        setup.k = k
        k.start()
        first = 'GROUP "G1" BACKUP 0'
        k.write(first)
        lines = [first]
        wait_fifo_open(setup.reader_pid, str(setup.fifo))
        for i in range(idle_events):
            if not wait_started(setup, ident_of_line(lines[-1]), 15):
                anomaly(setup, f"{lines[-1]}: no action within 15 s")
            time.sleep(1.6)
            lines.append(f'INSTANCE "VI_1" {"MASTER" if i % 2 else "BACKUP"} {i}')
            k.write(lines[-1])
        if not wait_started(setup, ident_of_line(lines[-1]), 15):
            anomaly(setup, f"{lines[-1]}: no action within 15 s")
        k.reload().join()
        wait_fifo_open(setup.reader_pid, str(setup.fifo))
        lines.append('INSTANCE "VI_1" MASTER 999')
        k.write(lines[-1])
        if not wait_started(setup, ident_of_line(lines[-1]), 15):
            anomaly(setup, f"{lines[-1]}: no action within 15 s after a reload")
        k.stop([])
        starts = {i: ts for kind, ts, i in setup.records() if kind == "start"}
        writes = {ident_of_line(line): wall for line, ok, wall, _ in k.writes if ok}

        def latency(line: str) -> float | None:
            i = ident_of_line(line)
            return (starts[i] - writes[i]) * 1000 if i in starts and i in writes else None

        past = [x for x in map(latency, lines[1:-1]) if x is not None]
        return {"start_ms": latency(lines[0]), "past_linger_ms": statistics.median(past) if past else None,
                "reload_ms": latency(lines[-1])}
    finally:
        setup.cleanup()


def launcher_breakdown(setup: Setup, lines: list[str], writes: dict[Ident, float],
                       starts: dict[Ident, float]) -> dict[str, float]:
    """Where an idle event's latency goes: FIFO write -> journaled (reader), journaled -> the
    worker's progress 'start' record (written right after Popen returned), that record -> the
    handler's first timestamp (negative: the handler was already running)."""
    journal: dict[int, tuple[Ident, float]] = {}
    for line in (setup.state / "journal").read_text().splitlines():
        p = line.split("\t")
        journal[int(p[0])] = ((p[3], p[4], p[5], p[6]), float(p[1]))
    progress: dict[Ident, float] = {}
    for line in (setup.state / "progress").read_text().splitlines():
        rec = json.loads(line)
        if rec["op"] == "start" and rec["seq"] in journal:
            progress[journal[rec["seq"]][0]] = rec["t"]
    jt = {ident: t for ident, t in journal.values()}
    a, b, c = [], [], []
    for line in lines:
        i = ident_of_line(line)
        if i in jt and i in progress and i in starts:
            a.append((jt[i] - writes[i]) * 1000)
            b.append((progress[i] - jt[i]) * 1000)
            c.append((starts[i] - progress[i]) * 1000)
    return {"write_to_journal_ms": statistics.median(a), "journal_to_progress_start_ms": statistics.median(b),
            "progress_start_to_handler_ms": statistics.median(c)}


def burst_lines(n: int, instances: int) -> list[str]:
    # (instance, priority) is unique per line: priority = how many lines this instance had before
    assert n // instances <= 250
    return [f'INSTANCE "VI_{i % instances}" {"MASTER" if (i // instances) % 2 else "BACKUP"} {i // instances}'
            for i in range(n)]


def phase_burst(root: Path, side: str, label: str, n: int, instances: int, nap: float) -> dict[str, Any]:
    setup = Setup(root, side, label, nap)
    try:
        k = setup.start()
        time.sleep(0.3)
        warm = 'GROUP "G1" BACKUP 0'  # warm: the launcher's worker lingers on its doorbell
        k.write(warm)
        if not wait_started(setup, ident_of_line(warm), 15):
            anomaly(setup, "the warm-up event's action did not start within 15 s")
        time.sleep(0.5)
        base_ends = setup.count_ends()
        cpu_before = cpu_snapshot(setup)
        lines = burst_lines(n, instances)
        sampler = Sampler(setup)
        sampler.start()
        n_before = len(k.writes)
        for line in lines:
            k.write(line)
        burst_writes = k.writes[n_before:]
        written = [ident_of_line(w[0]) for w in burst_writes if w[1]]
        first_wall = burst_writes[0][2]
        # drain: every written event ended, or nothing new for 5 s (events lost), or 300 s
        last_size, last_change, deadline = -1, time.monotonic(), time.monotonic() + 300
        while setup.count_ends() - base_ends < len(written) and time.monotonic() < deadline:
            size = setup.records_path.stat().st_size
            if size != last_size:
                last_size, last_change = size, time.monotonic()
            elif time.monotonic() - last_change > 5:
                break
            time.sleep(0.05)
        sampler.finish()
        cpu_after = cpu_snapshot(setup)
        reader_rss = psutil.Process(setup.reader_pid).memory_info().rss
        peak, detail = sampler.peak(action_pids(setup) | sampler.actions())
        peak_raw, detail_raw = sampler.peak()
        out = analyze_burst(setup.records(), written)
        out.update({"written": len(written), "dropped": k.dropped,
                    "drain_s": out.pop("last_end") - first_wall,
                    "peak_processes": peak, "peak_kinds": summarize_peak(detail),
                    "peak_processes_with_preexec_handlers": peak_raw, "samples": len(sampler.samples),
                    "peak_detail": describe(detail, sampler.ppids, setup) if len(detail) <= 10 else None,
                    "peak_detail_with_preexec": describe(detail_raw, sampler.ppids, setup)
                    if len(detail_raw) <= 10 else None,
                    "reader_rss_peak_mb": max(sampler.peak_rss, reader_rss) / 2**20,
                    "write_loop_ms": (burst_writes[-1][3] - burst_writes[0][3]) * 1000})
        ran = out["ran"]
        if cpu_before is not None and cpu_after is not None and cpu_before[0] == cpu_after[0] and ran:
            out["cpu_own_ms_per_event"] = (cpu_after[1] - cpu_before[1]) * 1000 / ran
            out["cpu_children_ms_per_event"] = (cpu_after[2] - cpu_before[2]) * 1000 / ran
        out["overhead_ms_per_event"] = (out["drain_s"] - out["own_s"]) * 1000 / ran if ran else None
        out["stop"] = stop_and_measure(setup, [f'INSTANCE "VI_{i}" STOP 255' for i in range(instances)]
                                       + ['GROUP "G1" STOP 0'])
        return out
    finally:
        setup.cleanup()


def cpu_snapshot(setup: Setup) -> tuple[tuple[int, ...], float, float] | None:
    """(pids, own CPU s, reaped children's CPU s) of the side's resident processes: the launcher's
    reader and worker (its children: the actions), or the bash reader (its children: setsid/flock
    jobs, whose children are the actions).  None if the worker cannot be found."""
    pids = [setup.reader_pid]
    if setup.side == "launcher":
        try:
            pids.append(int((setup.state / "worker.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            return None
    own = children = 0.0
    try:
        for pid in pids:
            t = psutil.Process(pid).cpu_times()
            own += t.user + t.system
            children += t.children_user + t.children_system
    except psutil.Error:
        return None
    return tuple(pids), own, children


def analyze_burst(records: list[tuple[str, float, Ident]], written: list[Ident]) -> dict[str, Any]:
    index = {ident: n for n, ident in enumerate(written)}
    starts: dict[Ident, float] = {}
    ends: dict[Ident, float] = {}
    order: list[Ident] = []
    duplicates = overlaps = running = 0
    for kind, ts, ident in records:  # file order = append order = real order of the echo lines
        if kind == "start":
            if running:
                overlaps += 1
            running += 1
            if ident in index:
                if ident in starts:
                    duplicates += 1
                else:
                    starts[ident] = ts
                    order.append(ident)
        else:
            running = max(0, running - 1)
            if ident in index:
                ends[ident] = ts
    inv_global = inv_instance = 0
    top = -1
    top_by: dict[str, int] = {}
    for ident in order:
        n = index[ident]
        if n < top:
            inv_global += 1
        top = max(top, n)
        if n < top_by.get(ident[1], -1):
            inv_instance += 1
        top_by[ident[1]] = max(top_by.get(ident[1], -1), n)
    own = sum(ends[i] - starts[i] for i in starts if i in ends)
    return {"ran": len(starts), "lost": len(written) - len(starts), "duplicates": duplicates,
            "unfinished": len(starts) - sum(1 for i in starts if i in ends),
            "inversions_per_instance": inv_instance, "inversions_global": inv_global,
            "overlaps": overlaps, "own_s": own, "last_end": max(ends.values()) if ends else float("nan")}


def machine_busy(since: tuple[float, float] | None = None) -> Any:
    """System-wide CPU: a (busy, total) snapshot, or the busy % of all CPUs since a snapshot."""
    t = psutil.cpu_times()
    total = sum(t)
    busy = total - t.idle - getattr(t, "iowait", 0.0)
    if since is None:
        return busy, total
    return max(0.0, 100 * (busy - since[0]) / max(1e-9, total - since[1]))


def wait_quiet(limit: float, below: float = 10.0) -> float:
    """Wait (at most `limit` s) until the machine was less than `below` % busy over one second."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        snap = machine_busy()
        time.sleep(1.0)
        if machine_busy(snap) < below:
            break
    waited = time.monotonic() - t0
    if waited > 1.5:
        log(f"waited {waited:.0f}s for a quieter machine")
    return waited


def phase_idle_cpu(root: Path, seconds: float, nap: float) -> dict[str, Any]:
    """Both readers alive at once, each after a few events (the launcher's worker lingering), idle."""
    setups = {side: Setup(root, side, "cpu", nap) for side in SIDES}
    try:
        for s in setups.values():
            s.start()
        time.sleep(0.3)
        for s in setups.values():
            for i in range(3):
                s.k.write(f'INSTANCE "VI_1" {"MASTER" if i % 2 else "BACKUP"} {i}')  # type: ignore[union-attr]
                time.sleep(0.2)
        time.sleep(1.0)
        before: dict[str, dict[int, float]] = {}
        procs: dict[str, dict[int, psutil.Process]] = {}
        for side, s in setups.items():
            procs[side] = {pid: psutil.Process(pid) for pid, _ in s.processes()}
            before[side] = {pid: sum(p.cpu_times()[:2]) for pid, p in procs[side].items()}
        log(f"idle CPU: both readers idle for {seconds:g}s")
        busy0 = machine_busy()
        time.sleep(seconds)
        out: dict[str, Any] = {"seconds": seconds, "machine_busy_pct": machine_busy(busy0)}
        for side, s in setups.items():
            after = {}
            for pid, p in procs[side].items():
                try:
                    after[pid] = sum(p.cpu_times()[:2])
                except psutil.Error:
                    after[pid] = before[side][pid]
            reader = s.reader_pid
            rss = 0
            for p in procs[side].values():
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            out[side] = {"reader_cpu_s": after[reader] - before[side][reader], "resident_rss_mb": rss / 2**20,
                         "others_cpu_s": float(sum(after[p] - before[side][p] for p in after if p != reader)),
                         "processes_idle": len(procs[side]),
                         "reader_rss_mb": procs[side][reader].memory_info().rss / 2**20}
        for s in setups.values():
            s.k.stop([])  # type: ignore[union-attr]
        return out
    finally:
        for s in setups.values():
            s.cleanup()


# --------------------------------------------------------------------------------------------- report

def med(xs: list[float | None]) -> float | None:
    ys = [x for x in xs if x is not None]
    return statistics.median(ys) if ys else None


def sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarize(reps: list[dict[str, Any]], cpu: dict[str, Any]) -> dict[str, dict[str, Any]]:
    s: dict[str, dict[str, Any]] = {}

    def put(key: str, fn: Any, agg: str = "median") -> None:
        s[key] = {}
        for side in SIDES:
            vals = [fn(r, side) for r in reps]
            vals = [v for v in vals if v is not None]
            if not vals:
                s[key][side] = None
            elif agg == "max":
                s[key][side] = {"median": statistics.median(vals), "max": max(vals)}
            else:
                s[key][side] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

    put("direct_latency_ms", lambda r, side: r["direct"]["latency_ms_median"])
    put("idle_latency_ms_median", lambda r, side: r[side]["idle"]["latency_ms_median"])
    put("idle_latency_ms_p99", lambda r, side: r[side]["idle"]["latency_ms_p99"])
    put("idle_own_share_ms",
        lambda r, side: sub(r[side]["idle"]["latency_ms_median"], r["direct"]["latency_ms_median"]))
    put("idle_own_share_p99_ms",
        lambda r, side: sub(r[side]["idle"]["latency_ms_p99"], r["direct"]["latency_ms_median"]))
    put("cold_first_event_ms", lambda r, side: r[side]["idle"]["cold_ms"])
    for state in ("start", "past_linger", "reload"):
        put(f"{state}_own_share_ms",
            lambda r, side, state=state: sub(r[side]["states"][f"{state}_ms"], r["direct"]["latency_ms_median"]))
    put("cold_own_share_ms", lambda r, side: sub(r[side]["idle"]["cold_ms"], r["direct"]["latency_ms_median"]))
    for key in ("dropped", "lost", "duplicates", "inversions_per_instance", "inversions_global", "overlaps",
                "peak_processes", "peak_processes_with_preexec_handlers"):
        put(f"burst_{key}", lambda r, side, key=key: r[side]["burst"][key], agg="max")
    put("cold_start_peak_processes", lambda r, side: r[side]["idle"]["cold_start_peak_processes"], agg="max")
    put("burst_drain_s", lambda r, side: r[side]["burst"]["drain_s"])
    put("burst_overhead_ms", lambda r, side: r[side]["burst"]["overhead_ms_per_event"])
    put("handler_process_cost_ms",
        lambda r, side: sub(r["direct"]["run_wall_ms_median"], r["direct"]["run_own_ms_median"]))
    put("burst_cpu_own_ms", lambda r, side: r[side]["burst"].get("cpu_own_ms_per_event"))
    put("burst_cpu_jobs_ms",
        lambda r, side: sub(r[side]["burst"].get("cpu_children_ms_per_event"), r["direct"]["run_cpu_ms_mean"]))
    put("handler_cpu_ms", lambda r, side: r["direct"]["run_cpu_ms_mean"])
    put("burst_overhead_net_ms", lambda r, side: (r[side]["burst"]["overhead_ms_per_event"]
                                                  + r[side]["burst"]["own_s"] * 1000 / r[side]["burst"]["ran"]
                                                  - r["direct"]["run_wall_ms_median"])
        if r[side]["burst"]["ran"] else None)
    stops = lambda r, side: [r[side]["idle"]["stop"], r[side]["burst"]["stop"]]  # noqa: E731
    s["stop_exit_after_last_stop_ms"] = {}
    s["stop_exit_after_term_ms"] = {}
    s["stop_captured"] = {}
    s["stop_killed"] = {}
    for side in SIDES:
        all_stops = [x for r in reps for x in stops(r, side)]
        ex = [x["exit_after_last_stop_ms"] for x in all_stops]
        s["stop_exit_after_last_stop_ms"][side] = {"median": statistics.median(ex), "max": max(ex)}
        et = [x["exit_after_term_ms"] for x in all_stops]
        s["stop_exit_after_term_ms"][side] = {"median": statistics.median(et), "max": max(et)}
        s["stop_captured"][side] = {"stops": len(all_stops),
                                    "all_captured": sum(1 for x in all_stops
                                                        if x["stop_actions_run"] == x["stop_lines"]),
                                    "lines": sum(x["stop_lines"] for x in all_stops),
                                    "lines_run": sum(x["stop_actions_run"] for x in all_stops)}
        s["stop_killed"][side] = sum(1 for x in all_stops if x["killed"])
    put("reader_rss_mb", lambda r, side: max(r[side]["idle"]["reader_rss_mb"], r[side]["burst"]["reader_rss_peak_mb"]),
        agg="max")
    s["idle_reader_cpu_s"] = {side: cpu[side]["reader_cpu_s"] for side in SIDES}
    s["idle_resident_rss_mb"] = {side: cpu[side]["resident_rss_mb"] for side in SIDES}
    s["idle_others_cpu_s"] = {side: cpu[side]["others_cpu_s"] for side in SIDES}
    return s


def fmt(v: Any, unit: str = "", nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}{unit}"
    return f"{v}{unit}"


def table(s: dict[str, dict[str, Any]], cfg: dict[str, Any], real: dict[str, Any] | None = None,
          more: list[tuple[str, str, str, str, bool | None]] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The table; `more`: rows measured outside the reps' phases (the first event beside the bare
    interpreter, scale.py's), with what they are beside in the baseline column."""
    rows: list[tuple[str, str, str, str, bool | None]] = []
    targets: list[dict[str, Any]] = []

    def m(key: str, side: str, stat: str = "median") -> Any:
        v = s[key][side]
        return None if v is None else v[stat]

    def row(label: str, lv: str, bv: str, target: str = "", met: bool | None = None) -> None:
        rows.append((label, lv, bv, target, met))
        if target:
            targets.append({"metric": label, "launcher": lv, "target": target, "met": met})

    ms = lambda v: fmt(v, " ms")  # noqa: E731
    row("handler spawned directly: start latency", ms(m("direct_latency_ms", "launcher")), "(same)")
    row("idle: event->action start, median", ms(m("idle_latency_ms_median", "launcher")),
        ms(m("idle_latency_ms_median", "baseline")))
    row("idle: event->action start, p99", ms(m("idle_latency_ms_p99", "launcher")),
        ms(m("idle_latency_ms_p99", "baseline")))
    lsh, bsh = m("idle_own_share_ms", "launcher"), m("idle_own_share_ms", "baseline")
    ok = lsh is not None and bsh is not None and lsh <= 1.5 and lsh <= 0.4 * bsh
    row("worker alive: own share (median - direct)", ms(lsh), ms(bsh), "<= 1.5 ms and <= 0.4x baseline", ok)
    row("worker alive: own share at p99", ms(m("idle_own_share_p99_ms", "launcher")),
        ms(m("idle_own_share_p99_ms", "baseline")))
    for key, label in (("past_linger", "after an idle longer than linger"),
                       ("cold", "first event, reader up 0.3 s"),
                       ("reload", "first event after a reload"),
                       ("start", "first event, written as the script starts")):
        lsh, bsh = m(f"{key}_own_share_ms", "launcher"), m(f"{key}_own_share_ms", "baseline")
        ok = lsh is not None and bsh is not None and lsh <= 1.5 and lsh <= bsh
        row(f"{label}: own share", ms(lsh), ms(bsh), "<= 1.5 ms and <= baseline", ok)
    n = cfg["burst"]
    for key, label in (("dropped", "lines dropped (pipe full)"), ("lost", "events lost (never run)"),
                       ("duplicates", "events run twice"),
                       ("inversions_per_instance", "order inversions, per instance"),
                       ("inversions_global", "order inversions, global"),
                       ("overlaps", "overlaps (2 actions at once)")):
        lv, bv = s[f"burst_{key}"]["launcher"], s[f"burst_{key}"]["baseline"]
        target = "0" if key != "duplicates" else ""
        row(f"burst {n}: {label}", f"{lv['median']:g} (max {lv['max']})", f"{bv['median']:g} (max {bv['max']})",
            target, lv["max"] == 0 if target else None)
    row(f"burst {n}: drain time", fmt(m("burst_drain_s", "launcher"), " s"), fmt(m("burst_drain_s", "baseline"), " s"))
    ov = m("burst_overhead_ms", "launcher")
    row("burst: overhead/event (drain-sum(own))/N", ms(ov), ms(m("burst_overhead_ms", "baseline")),
        "<= 0.5 ms/event", ov is not None and ov <= 0.5)
    row("  of which the action's process cost *", ms(m("handler_process_cost_ms", "launcher")), "(same)")
    on = m("burst_overhead_net_ms", "launcher")
    row("burst: own overhead/event, net of *", ms(on), ms(m("burst_overhead_net_ms", "baseline")),
        "<= 0.3 ms/event", on is not None and on <= 0.3)
    row("burst: CPU/event of the resident processes", ms(m("burst_cpu_own_ms", "launcher")),
        ms(m("burst_cpu_own_ms", "baseline")))
    row("  + reaped children's CPU - the action's", ms(m("burst_cpu_jobs_ms", "launcher")),
        ms(m("burst_cpu_jobs_ms", "baseline")))
    lp, bp = s["burst_peak_processes"]["launcher"], s["burst_peak_processes"]["baseline"]
    row("burst: processes at peak (no handlers)", f"{lp['median']:g} (max {lp['max']})",
        f"{bp['median']:g} (max {bp['max']})", "<= 3", lp["max"] <= 3)
    lp, bp = s["burst_peak_processes_with_preexec_handlers"]["launcher"], s["burst_peak_processes"]["baseline"]
    row("  same, + worker's child before its exec", f"{lp['median']:g} (max {lp['max']})", "")
    lp, bp = s["cold_start_peak_processes"]["launcher"], s["cold_start_peak_processes"]["baseline"]
    row("cold first event: processes at peak", f"{lp['median']:g} (max {lp['max']})",
        f"{bp['median']:g} (max {bp['max']})")
    le, be = s["stop_exit_after_last_stop_ms"]["launcher"], s["stop_exit_after_last_stop_ms"]["baseline"]
    row("stop: reader exit after last STOP line", ms(le["median"]), ms(be["median"]), "<= 150 ms",
        le["median"] <= 150)
    row("stop: same, worst of all stops", ms(le["max"]), ms(be["max"]), "never >= 700 ms", le["max"] < 700)
    lt, bt = s["stop_exit_after_term_ms"]["launcher"], s["stop_exit_after_term_ms"]["baseline"]
    row("stop: reader exit after SIGTERM (med/max)", f"{lt['median']:.1f}/{lt['max']:.1f} ms",
        f"{bt['median']:.1f}/{bt['max']:.1f} ms")
    lc, bc = s["stop_captured"]["launcher"], s["stop_captured"]["baseline"]
    row("stop: STOP lines' actions run", f"{lc['lines_run']}/{lc['lines']} lines",
        f"{bc['lines_run']}/{bc['lines']} lines", "all", lc["lines_run"] == lc["lines"])
    row("stop: SIGKILLed at +1 s", f"{s['stop_killed']['launcher']}/{lc['stops']}",
        f"{s['stop_killed']['baseline']}/{bc['stops']}", "0", s["stop_killed"]["launcher"] == 0)
    lr, br = s["reader_rss_mb"]["launcher"], s["reader_rss_mb"]["baseline"]
    row("reader RSS (median/max of reps)", f"{lr['median']:.1f}/{lr['max']:.1f} MB",
        f"{br['median']:.1f}/{br['max']:.1f} MB", "<= 20 MB", lr["max"] <= 20)
    lcpu, bcpu = s["idle_reader_cpu_s"]["launcher"], s["idle_reader_cpu_s"]["baseline"]
    row(f"reader CPU over {cfg['idle_cpu_s']:g} s idle", fmt(lcpu, " s"), fmt(bcpu, " s"), "0.00 s",
        round(lcpu, 2) == 0.0)
    ocpu = s["idle_others_cpu_s"]["launcher"]
    row("  standby worker's CPU, same period", fmt(ocpu, " s"), fmt(s["idle_others_cpu_s"]["baseline"], " s"),
        "0.00 s", round(ocpu, 2) == 0.0)
    lres = s["idle_resident_rss_mb"]["launcher"]
    row("resident while idle (reader + standby), RSS", fmt(lres, " MB", 1),
        fmt(s["idle_resident_rss_mb"]["baseline"], " MB", 1), "<= 45 MB", lres <= 45)

    for r in more or []:
        row(*r)
    if real is not None:
        real_rows(real, row)

    heads = ("metric", "launcher", "baseline", "target", "")
    w = [max(len(heads[i]), *(len(str(r[i])) for r in rows)) for i in range(4)]
    out = ["  ".join(h.ljust(w[i]) for i, h in enumerate(heads[:4])) + "  met?",
           "  ".join("-" * x for x in w) + "  -------"]
    for r in rows:
        mark = "" if r[4] is None else ("met" if r[4] else "NOT MET")
        out.append("  ".join(str(r[i]).ljust(w[i]) for i in range(4)) + "  " + mark)
    return "\n".join(out), targets


def phase_real(quick: bool, wait_quiet_s: float) -> dict[str, Any]:
    """Issue 11's rows that need root: real keepalived (failover.py: two nodes in network namespaces,
    node1 TERM -> node2's MASTER action) and a real systemd (systemd_states.py: workers as transient
    units in keepalived.service).  Each runs as its own script, whose JSON is kept whole; a missing
    prerequisite (not root, no keepalived, no systemd-nspawn) is reported in the table, not hidden."""
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(here)]))
    runs = {"failover": [str(here / "failover.py"), "--json", "--reps", "3" if quick else "5",
                         "--wait-quiet", str(wait_quiet_s)],
            "systemd": [str(here / "systemd_states.py"), "--json", "--reps", "1" if quick else "3"]}
    out: dict[str, Any] = {}
    for name, argv in runs.items():
        problem = (realka.missing_prerequisite if name == "failover" else harness.missing_prerequisites)()
        if problem:
            out[name] = {"error": problem}
            continue
        log(f"{name}: {' '.join(Path(a).name if a.startswith('/') else a for a in argv)} (root only; its log follows)")
        res = subprocess.run([sys.executable, *argv], env=env, stdout=subprocess.PIPE, text=True)
        try:
            out[name] = json.loads(res.stdout)
        except ValueError:
            out[name] = {"error": f"{Path(argv[0]).name} exited {res.returncode} without a result (see its log above)"}
    return out


def real_rows(real: dict[str, Any], row: Callable[..., None]) -> None:
    """failover.py's and systemd_states.py's results as rows of the table (targets as on the host)."""
    def ms(v: float | None) -> str:
        return fmt(v, " ms")

    fo = real.get("failover", {})
    if "summary" in fo:
        f = fo["summary"]
        for case, shell, factor, label in (("alive", "shell", 0.4, "worker alive"),
                                           ("idle", "shell_idle", 1.0, "idle longer than linger")):
            la, sh = f[case], f[shell]
            row(f"real keepalived, {label}: node1 TERM -> node2 action", ms(la["total_ms"]), ms(sh["total_ms"]))
            ok = la["net_ms"] <= 1.5 and la["net_ms"] <= factor * sh["net_ms"]
            row("  its FIFO write -> action start, own share", ms(la["net_ms"]), ms(sh["net_ms"]),
                f"<= 1.5 ms and <= {'' if factor == 1 else f'{factor:g}x '}baseline", ok)
        lost = sum(f[c]["lost"] + f[c]["extra"] for c in ("alive", "idle"))
        row("real keepalived: events lost or run twice", str(lost),
            str(sum(f[c]["lost"] + f[c]["extra"] for c in ("shell", "shell_idle"))), "0", lost == 0)
    else:
        row("real keepalived (failover.py)", "not measured:", fo.get("error", "?"))
    sd = real.get("systemd", {})
    if "states" in sd:
        for st in sd["states"]:
            row(f"systemd units: {st['state'].split(' (')[0]}: own share", ms(st["launcher_own_ms"]),
                ms(st["shell_own_ms"]), st["target"].replace("shell", "baseline"), st["met"])
    else:
        row("under systemd (systemd_states.py)", "not measured:", sd.get("error", "?"))


# --------------------------------------------------------------------------------------------- main

def git_state() -> str:
    """Which launcher code ran: HEAD, and whether notify_launcher/ had uncommitted edits (read-only git)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "notify_launcher"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted edits in notify_launcher/' if dirty else ''}"


def bare_python_ms(n: int = 5) -> float:
    """The bare interpreter's start (fork to exit, median of `n`): what the first event's wait is
    set beside, measured in the same rep."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def first_event_rows(reps: list[dict[str, Any]]) -> list[tuple[str, str, str, str, bool | None]]:
    """The first event's whole wait (line written as the script starts -> its action's start),
    beside the bare interpreter's start in the same reps."""
    waits = [r["launcher"]["states"]["start_ms"] for r in reps if r["launcher"]["states"]["start_ms"] is not None]
    bare = statistics.median(r["bare_python_ms"] for r in reps)
    if not waits:
        return [("first event, written as the script starts: wait", "-", f"bare python {bare:.1f} ms", "<= 40 ms", False)]
    wait = statistics.median(waits)
    return [("first event, written as the script starts: wait", f"{wait:.1f} ms",
             f"bare python {bare:.1f} ms ({wait / bare:.1f}x)", "<= 40 ms", wait <= 40)]


def burst_only(root: Path, cfg: dict[str, Any], keep: bool) -> int:
    """The launcher's side of the burst phase alone, `reps` times: a quick before/after of the
    resident processes' CPU per event (a change to the worker's hot path)."""
    rows = []
    try:
        for rep in range(cfg["reps"]):
            log(f"rep {rep + 1}/{cfg['reps']}: launcher: burst of {cfg['burst']}")
            rows.append(phase_burst(root, "launcher", f"burst-r{rep}", cfg["burst"], cfg["instances"], cfg["nap_s"]))
    finally:
        processes.end_all(str(root), term_grace=3.0)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    for key, what in (("cpu_own_ms_per_event", "CPU/event of the resident processes (ms)"),
                      ("overhead_ms_per_event", "overhead/event (drain-sum(own))/N (ms)"), ("drain_s", "drain (s)")):
        values = [r[key] for r in rows if r.get(key) is not None]
        print(f"burst {cfg['burst']}: {what:<42} median {statistics.median(values):.3f}  "
              f"({', '.join(f'{v:.3f}' for v in values)})" if values else f"{what}: no value")
    print(f"lost {sum(r['lost'] for r in rows)}, overlaps {sum(r['overlaps'] for r in rows)}, "
          f"load average {os.getloadavg()[0]:.2f}; launcher {cfg['launcher']} (run.py's checkout: {cfg['git']})")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 reps, 20 idle events, 10 s idle CPU (about 1.5 min)")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    p.add_argument("--reps", type=int, help="repetitions (default 5, 2 with --quick)")
    p.add_argument("--idle-events", type=int, help="idle events per rep (default 50, 20 with --quick)")
    p.add_argument("--spacing", type=float, default=0.2, help="seconds between idle events (default 0.2)")
    p.add_argument("--burst", type=int, default=2000, help="burst size (default 2000)")
    p.add_argument("--instances", type=int, default=10, help="instances in the burst (default 10)")
    p.add_argument("--idle-cpu", type=float, help="idle CPU period, s (default 60, 10 with --quick)")
    p.add_argument("--nap", type=float, default=0.001, help="the action's own run time, s (default 0.001)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, journals, records)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SEC",
                   help="before each rep, wait up to SEC for the machine to be < 10%% busy (default 0: don't)")
    p.add_argument("--launcher", default=LAUNCHER, help="notify-launcher executable (default: this checkout's)")
    p.add_argument("--metrics", action="store_true", help="the launcher writes a metrics file (--metrics-file)")
    p.add_argument("--host-only", action="store_true",
                   help="skip the rows under real keepalived and a real systemd (root only; about 5 min, "
                        "2.5 with --quick; measured from this checkout, whatever --launcher says)")
    p.add_argument("--no-scale", action="store_true", help="without scale.py's rows (names, history: ~2 min)")
    p.add_argument("--scale-only", action="store_true", help="only scale.py's rows, --reps times (default 3)")
    p.add_argument("--burst-only", action="store_true",
                   help="only the launcher's burst (--reps of them): its CPU per event, drain and overhead rows")
    args = p.parse_args()
    use(args.launcher)
    METRICS[0] = args.metrics
    # keepalived's cwd is /; ours must not leak in either: `python -m notify_launcher` puts the cwd
    # first on sys.path, so starting from a checkout would run that checkout's code, not --launcher's
    os.chdir("/")
    cfg = {"reps": args.reps or (2 if args.quick else 5),
           "idle_events": args.idle_events or (20 if args.quick else 50),
           "spacing_s": args.spacing, "burst": args.burst, "instances": args.instances,
           "idle_cpu_s": args.idle_cpu if args.idle_cpu is not None else (10.0 if args.quick else 60.0),
           "nap_s": args.nap, "quick": args.quick, "launcher": LAUNCHER_CMD[0], "git": git_state(),
           "metrics_file": args.metrics}
    root = Path(tempfile.mkdtemp(prefix="nl-bench-"))
    if args.scale_only:
        return scale.main(["--reps", str(args.reps or 3), "--launcher", LAUNCHER_CMD[0]])
    if args.burst_only:
        return burst_only(root, cfg, args.keep)
    t_start = time.monotonic()
    reps: list[dict[str, Any]] = []
    try:
        load_start = os.getloadavg()
        for rep in range(cfg["reps"]):
            r: dict[str, Any] = {}
            if args.wait_quiet:
                r["waited_for_quiet_s"] = wait_quiet(args.wait_quiet)
            busy0 = machine_busy()
            log(f"rep {rep + 1}/{cfg['reps']}: handler spawned directly")
            r["direct"] = phase_direct(root, f"r{rep}", max(15, cfg["idle_events"] // 2), cfg["spacing_s"], args.nap)
            order = SIDES if rep % 2 == 0 else SIDES[::-1]
            for side in order:
                log(f"rep {rep + 1}/{cfg['reps']}: {side}: idle latency ({cfg['idle_events']} events, "
                    f"{cfg['spacing_s'] * 1000:.0f} ms apart)")
                r.setdefault(side, {})["idle"] = phase_idle(root, side, f"idle-r{rep}", cfg["idle_events"],
                                                            cfg["spacing_s"], args.nap)
            for side in order:
                log(f"rep {rep + 1}/{cfg['reps']}: {side}: first events at start, past linger, after a reload")
                r[side]["states"] = phase_states(root, side, f"states-r{rep}", args.nap)
            r["bare_python_ms"] = bare_python_ms()
            for side in order:
                log(f"rep {rep + 1}/{cfg['reps']}: {side}: burst of {cfg['burst']}")
                r[side]["burst"] = phase_burst(root, side, f"burst-r{rep}", cfg["burst"], cfg["instances"], args.nap)
                b = r[side]["burst"]
                log(f"   dropped {b['dropped']} lost {b['lost']} inversions {b['inversions_per_instance']}/"
                    f"{b['inversions_global']} overlaps {b['overlaps']} drain {b['drain_s']:.2f}s "
                    f"peak {b['peak_processes']} procs")
            r["machine_busy_pct"] = machine_busy(busy0)
            reps.append(r)
        scaled = None if args.no_scale else scale.measure(cfg["reps"], 60, LAUNCHER_CMD[0])
        cpu = phase_idle_cpu(root, cfg["idle_cpu_s"], args.nap)
        load_end = os.getloadavg()
        real = None if args.host_only else phase_real(args.quick, args.wait_quiet)
    finally:
        processes.end_all(str(root), term_grace=3.0)
        if args.keep or ANOMALIES:
            log(f"kept {root}" + (" (anomalies: see below)" if ANOMALIES else ""))
        else:
            shutil.rmtree(root, ignore_errors=True)
    summary = summarize(reps, cpu)
    text, targets = table(summary, cfg, real, first_event_rows(reps) + (scale.rows(scaled) if scaled else []))
    elapsed = time.monotonic() - t_start
    head = (f"notify-launcher benchmark: {cfg['reps']} reps, {cfg['idle_events']} idle events/rep "
            f"{cfg['spacing_s'] * 1000:.0f} ms apart (steady state, worker lingering), burst {cfg['burst']} "
            f"over {cfg['instances']} instances (warm), action nap {args.nap * 1000:g} ms; "
            f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}; "
            f"{elapsed:.0f} s\nlauncher: {cfg['launcher']} (code: {cfg['git']})\n"
            f"values: medians over reps; (max N) = worst rep, judged on the max")
    foreign = cpu["machine_busy_pct"]
    head += (f"\nmachine: load average {load_start[0]:.2f} at start (the baseline's bursts raise it later); "
             f"{foreign:.0f}% of all CPUs busy during the idle-CPU phase (not us: our processes sleep then)")
    text += ("\n* the action's process cost: spawning it directly (subprocess.run, back to back) takes this much "
             "longer than its own start->end records; no launcher can spawn an action for less")
    if foreign > 5:
        head += "\nWARNING: other work was running on this machine; latencies and drain times are noisy"
    if ANOMALIES:
        text += "\nANOMALIES (temp dir kept: " + str(root) + "):\n" + "\n".join("  " + a for a in ANOMALIES)
    result = {"config": cfg, "elapsed_s": elapsed, "loadavg_start": load_start, "loadavg_end": load_end,
              "summary": summary, "targets": targets, "reps": reps, "idle_cpu": cpu, "real": real, "scale": scaled,
              "anomalies": ANOMALIES,
              "kept_dir": str(root) if ANOMALIES or args.keep else None}
    if args.json:
        print(head + "\n" + text, file=sys.stderr)
        print(json.dumps(result, indent=2, default=str))
    else:
        print(head + "\n" + text)
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)  # clean up (finally blocks) when stopped
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
