#!/usr/bin/env python3
"""The first event's wait when its line is in the FIFO as the script starts, beside the bare interpreter.

    PYTHONPATH=tests .venv/bin/python benchmarks/first_event.py [--reps 15] [--launcher PATH]

keepalived writes its first lines (MASTER at once for an address owner) before its
notify_fifo_script runs, so their action waits for the launcher's whole start-up: the reader's,
then the worker's (forked from it) up to the spawn.  Alternating in one run, medians: that wait
(the stand-in's write -> the action's start record), a bare interpreter's start (`python -I -S -c
pass`, fork to exit) and bash's, so the ratio holds on a loaded machine too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run  # (beside this file: the benchmark's setups: stand-in, recorder handler, cleanup by PID)


def first_event_ms(root: Path, label: str) -> float | None:
    """One cold start: the line is written as the script starts; its action's start - the write."""
    setup = run.Setup(root, "launcher", label, 0.001, extra=["--linger", "1"])
    try:
        k = run.BenchKeepalived(setup.argv(), str(setup.fifo))
        setup.k = k
        k.start()
        line = 'INSTANCE "VI_1" MASTER 100'
        k.write(line)
        ident = run.ident_of_line(line)
        if not run.wait_started(setup, ident, 15):
            return None
        k.stop([])
        starts = {i: ts for kind, ts, i in setup.records() if kind == "start"}
        writes = {run.ident_of_line(w): wall for w, ok, wall, _ in k.writes if ok}
        return (starts[ident] - writes[ident]) * 1000
    finally:
        setup.cleanup()


def start_ms(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return (time.perf_counter() - t0) * 1000


def measure(reps: int) -> dict[str, list[float]]:
    root = Path(tempfile.mkdtemp(prefix="nl-first-"))
    out: dict[str, list[float]] = {"first_event_ms": [], "bare_python_ms": [], "bash_ms": []}
    try:
        for rep in range(reps):
            ms = first_event_ms(root, f"first-{rep}")
            if ms is not None:
                out["first_event_ms"].append(ms)
            out["bare_python_ms"].append(start_ms([sys.executable, "-I", "-S", "-c", "pass"]))
            out["bash_ms"].append(start_ms(["bash", "-c", ":"]))
    finally:
        run.processes.end_all(str(root), term_grace=3.0)
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=15, help="cold starts, alternating with the interpreters (default 15)")
    p.add_argument("--launcher", default=run.LAUNCHER, help="notify-launcher executable (default: this checkout's)")
    args = p.parse_args()
    run.use(args.launcher)
    os.chdir("/")
    res = measure(args.reps)
    med = {k: statistics.median(v) if v else float("nan") for k, v in res.items()}
    print(f"first event written as the script starts (median of {len(res['first_event_ms'])}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}); launcher {run.LAUNCHER_CMD[0]}")
    print(f"  first event -> action start   {med['first_event_ms']:7.1f} ms  "
          f"({med['first_event_ms'] / med['bare_python_ms']:.1f}x the bare interpreter)")
    print(f"  bare interpreter start        {med['bare_python_ms']:7.1f} ms")
    print(f"  bash -c :                     {med['bash_ms']:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
