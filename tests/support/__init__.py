"""Test support: what the tests, the demo and the benchmarks drive the launcher with.

    standin      a keepalived stand-in: does to a notify_fifo_script what keepalived 2.2.7 does
    launcher     one launcher setup in a temp dir, driven through the stand-in (the `launcher` fixture)
    realka       real keepalived nodes in network namespaces (the `real_cluster` fixture, the demo)
    systemd/     a real systemd: Debian booted in systemd-nspawn (harness.py and the container's files)
    recorder     the one recording handler (script and parser): start and end of every action
    inorder      the one check that every journaled event ran exactly once, in order
    processes    the one process scanner: a setup's processes by command line, and their teardown
    marks        `needs(what, available)`: skip outside CI, fail under CI=true
    waiting      `wait_for(what, cond)`: the one poll on a state, failing with what it waited for
    tmpfs        a small tmpfs state directory (mounted for a block, unmounted after) and filling it

Here: the paths of this checkout, and `VI` / `VI_MASTER`, the one VRRP instance most tests drive.

On the path as the top-level package `support`: pytest puts tests/ there (setup.cfg,
`[tool:pytest] pythonpath = tests`); the demo and the benchmarks are run with PYTHONPATH=tests
(scripts/demo, the benchmark command in README.md).
"""

from __future__ import annotations

from pathlib import Path

from notify_launcher.events import Event

ROOT = Path(__file__).resolve().parent.parent.parent  # the checkout
LAUNCHER = str(ROOT / "bin" / "notify-launcher")  # the launcher as keepalived.conf.example runs it

VI = 'INSTANCE "VI_1" {} 100'  # a FIFO line of instance VI_1 at priority 100: VI.format("MASTER")
VI_MASTER = Event("INSTANCE", "VI_1", "MASTER", 100)  # the same instance's MASTER event, parsed
