#!/usr/bin/env python3
"""Why no Python reader serves a line already in the pipe when keepalived starts it within 1.5 ms.

    .venv/bin/python benchmarks/startup.py [--reps 31]          # from the checkout, after scripts/setup

keepalived writes its first lines (the initial BACKUP/FAULT states; MASTER at once for an address
owner, priority 255) before its notify_fifo_script runs, so their action waits for the script's own
start-up.  This prints, side by side and alternating (medians, wall time from fork to exit), what a
start-up costs: bash (the shell reader), the bare interpreter, then each step the launcher adds on
that path -- the reader's imports, and the worker's imports in the forked child, which inherits the
reader's modules.  Bytecode must exist (scripts/setup compiles it; a package install does too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

READER = "import notify_launcher.cli, notify_launcher.reader"
WORKER_IMPORTS = "import daemon, filelock, psutil, notify_launcher.worker"


def commands() -> list[tuple[str, list[str]]]:
    py = sys.executable
    return [("bash -c :  (the shell reader's interpreter)", ["bash", "-c", ":"]),
            ("python -I -S -c pass  (the bare interpreter)", [py, "-I", "-S", "-c", "pass"]),
            ("python -c pass  (this venv: site-packages)", [py, "-c", "pass"]),
            ("+ the reader's imports", [py, "-c", READER]),
            ("+ the reader's and the worker's imports", [py, "-c", f"{READER}; {WORKER_IMPORTS}"])]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=31, help="runs of each command, alternating (default 31)")
    args = p.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)  # this checkout's package, as bin/notify-launcher runs it
    cmds = commands()
    times: dict[str, list[float]] = {label: [] for label, _ in cmds}
    for _ in range(args.reps):
        for label, argv in cmds:
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, check=True)
            times[label].append((time.perf_counter() - t0) * 1000)
    width = max(map(len, times))
    print(f"start-up, fork to exit (median of {args.reps}, alternating; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f})")
    for label, ts in times.items():
        print(f"{label.ljust(width)}  {statistics.median(ts):7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
