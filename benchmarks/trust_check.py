#!/usr/bin/env python3
"""What the worker's check of a command right before each spawn costs (security.command_problem).

    .venv/bin/python benchmarks/trust_check.py [--runs 20000] [PATH ...]

Run as root (otherwise the check is skipped and costs nothing).  For each path (default: the
package's example handler /usr/bin/logger, /bin/sh, and a handler four directories deep in a fresh
root-owned directory in /tmp, once with an ACL on its directory), prints the median and the 99th
percentile of one check in microseconds, over `--runs` checks in 20 rounds (the median of the
rounds' medians; a round's p99 likewise).
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

from notify_launcher.security import command_problem


def measure(path: str, runs: int) -> tuple[float, float]:
    medians, p99s = [], []
    argv = [path, "INSTANCE", "VI_1", "MASTER", "100"]
    for _ in range(20):
        samples = []
        for _ in range(max(1, runs // 20)):
            t0 = time.perf_counter_ns()
            command_problem(argv)
            samples.append(time.perf_counter_ns() - t0)
        samples.sort()
        medians.append(samples[len(samples) // 2] / 1000)
        p99s.append(samples[int(len(samples) * 0.99)] / 1000)
    return statistics.median(medians), statistics.median(p99s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=20000)
    p.add_argument("paths", nargs="*")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("not root: the check is skipped (it protects root only); run as root to measure it", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="nl-trust-")
    try:
        deep = os.path.join(base, "a", "b", "c")
        os.makedirs(deep)
        handler = os.path.join(deep, "handler")
        with open(handler, "w") as fh:
            fh.write("#!/bin/sh\n")
        os.chmod(handler, 0o755)
        paths = args.paths or ["/usr/bin/logger", "/bin/sh", handler]
        for path in paths:
            assert command_problem([path]) is None, command_problem([path])
            median, p99 = measure(path, args.runs)
            print(f"{path}: median {median:.1f} us, p99 {p99:.1f} us per check")
        if not args.paths and shutil.which("setfacl"):
            subprocess.run(["setfacl", "-m", "u:root:rwx", deep], check=True)  # an ACL to parse, harmless
            median, p99 = measure(handler, args.runs)
            print(f"{handler} (an ACL on its directory): median {median:.1f} us, p99 {p99:.1f} us per check")
    finally:
        shutil.rmtree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
