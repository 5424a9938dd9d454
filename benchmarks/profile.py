#!/usr/bin/env python3
"""Where the launcher's time goes: py-spy on the reader and on the lingering worker.

    .venv/bin/pip install py-spy          # once; a dev tool, not a dependency of the launcher
    PYTHONPATH=tests .venv/bin/python benchmarks/profile.py [--idle-events 300] [--burst 2000] \
        [--rate 1000] [--keep]                                             # from the checkout

Same setup as benchmarks/run.py (stand-in, the bash recorder handler, a warm worker).  Two phases,
each recorded separately for the reader and for the worker (py-spy --nonblocking, idle stacks
excluded, so the samples are mostly CPU time; a read of a procfs file that waits in the kernel counts
as active too):
  idle    events 30 ms apart: each one crosses the whole path alone;
  burst   2,000 lines back to back, until every action ended.
Prints, per phase and process, the functions with the most samples (inclusive and self); the raw
collapsed stacks stay in the temp dir with --keep.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run  # benchmarks/run.py: this script's directory is on the path
from run import Setup, burst_lines, ident_of_line, log, wait_started
from support import processes

PY_SPY = str(Path(sys.executable).parent / "py-spy")


def spy(pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY_SPY, "record", "-p", str(pid), "-r", str(rate), "--nonblocking",
                             "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def end_spy(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def short(frame: str) -> str:
    # "func (path/file.py:123)" -> "func (file.py)"  (aggregate over line numbers)
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({os.path.basename(file)})"


def report(path: Path, title: str, top: int) -> str:
    incl: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    if not path.exists():
        return f"== {title}: no samples file\n"
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f]
        # py-spy's raw format starts with the process/thread line; keep Python frames only
        frames = [f for f in frames if ".py)" in f]
        # the worker was forked from the reader: cut that history at the worker's first frame
        cut = next((n for n, f in enumerate(frames) if f.endswith("(worker.py)")), 0)
        frames = frames[cut:]
        if not frames:
            continue
        total += n
        for f in set(frames):
            incl[f] += n
        self_[frames[-1]] += n
    out = [f"== {title}: {total} samples (CPU only)"]
    if total:
        out.append("   inclusive:")
        out += [f"   {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
        out.append("   self:")
        out += [f"   {100 * n / total:5.1f}%  {f}" for f, n in self_.most_common(top)]
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idle-events", type=int, default=300)
    p.add_argument("--spacing", type=float, default=0.03)
    p.add_argument("--burst", type=int, default=2000)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--launcher", default=run.LAUNCHER, help="notify-launcher executable (default: this checkout's)")
    args = p.parse_args()
    run.use(args.launcher)
    # keepalived's cwd is /; ours must not leak in either: `python -m notify_launcher` puts the cwd
    # first on sys.path, so starting from a checkout would run that checkout's code, not --launcher's
    os.chdir("/")
    if not os.path.exists(PY_SPY):
        print(f"needs py-spy: {sys.executable} -m pip install py-spy", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="nl-profile-"))
    texts = []
    try:
        setup = Setup(root, "launcher", "profile", 0.001)
        k = setup.start()
        time.sleep(0.3)
        k.write('GROUP "G1" BACKUP 0')
        assert wait_started(setup, ident_of_line('GROUP "G1" BACKUP 0'), 15)
        time.sleep(0.5)
        worker = int((setup.state / "worker.pid").read_text().split()[0])
        reader = setup.reader_pid

        log(f"idle: {args.idle_events} events {args.spacing * 1000:g} ms apart; py-spy on reader {reader}, "
            f"worker {worker}")
        spies = [spy(reader, root / "idle-reader.txt", args.rate), spy(worker, root / "idle-worker.txt", args.rate)]
        time.sleep(1.0)
        base = setup.count_ends()
        for i in range(args.idle_events):
            k.write(f'INSTANCE "VI_1" {"MASTER" if i % 2 else "BACKUP"} {i % 250}')
            time.sleep(args.spacing)
        while setup.count_ends() < base + args.idle_events:
            time.sleep(0.05)
        for s in spies:
            end_spy(s)

        log(f"burst: {args.burst} lines")
        spies = [spy(reader, root / "burst-reader.txt", args.rate), spy(worker, root / "burst-worker.txt", args.rate)]
        time.sleep(1.0)
        base = setup.count_ends()
        t0 = time.monotonic()
        for line in burst_lines(args.burst, 10):
            k.write(line)
        while setup.count_ends() < base + k.written - args.idle_events - 1 and time.monotonic() - t0 < 300:
            time.sleep(0.05)
        log(f"burst drained in {time.monotonic() - t0:.2f}s")
        for s in spies:
            end_spy(s)
        k.stop([])
        for name in ("idle-reader", "idle-worker", "burst-reader", "burst-worker"):
            texts.append(report(root / f"{name}.txt", name, args.top))
    finally:
        processes.end_all(str(root), term_grace=3.0)
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("\n".join(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
