"""The host-wide directory of per-FIFO files, named for the FIFO's path: which state directory its
events are journaled into (predecessor.py), and whose turn it is to read it (turn.py).

Not inside a state directory: a reload may change `--state-dir`, and these files must outlive that.
Root's alone (0700).  A reader registers its turn there first thing at start (turn.py), before its
imports: only `os` here.
"""

from __future__ import annotations

import os

REGISTRY = "/run/notify-launcher-fifos"


def entry_path(fifo: str, registry: str = REGISTRY) -> str:
    """The registry's file for `fifo`: its path with every link resolved (two spellings of one FIFO,
    /var/run/x and /run/x, are one entry: a reload onto an edited keepalived.conf may change it) as
    one file name ('%' and '/' escaped as urllib would; not urllib itself, whose import the reader's
    start-up would pay)."""
    return os.path.join(registry, os.path.realpath(fifo).replace("%", "%25").replace("/", "%2F"))
