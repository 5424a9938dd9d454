"""Python's development mode with warnings as errors (`python -X dev -W error`, here through
PYTHONDEVMODE and PYTHONWARNINGS, which every process of ours inherits): the reader, its worker and
every operator command run without a single warning -- an unclosed socket or file, a deprecated
call, a never-awaited anything.  Real FIFO, real events, keepalived's real SIGTERM (the stand-in)."""

from __future__ import annotations

import os
import subprocess

import pytest

from support import LAUNCHER, VI, processes
from support.launcher import Launcher
from support.standin import Keepalived

DEV = {"PYTHONDEVMODE": "1", "PYTHONWARNINGS": "error"}


def _operator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **DEV}, stdin=subprocess.DEVNULL)


def test_reader_worker_and_operator_commands_warn_about_nothing(launcher: Launcher,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DEV.items():
        monkeypatch.setenv(name, value)  # the stand-in's reader, and so its worker, inherit them
    errors = launcher.dir / "reader.stderr"
    # keepalived gives the script /dev/null as stderr; here it is a file, to be read at the end
    k = Keepalived(["sh", "-c", f'exec "$@" 2>>{errors}', "sh", *launcher.argv()], str(launcher.fifo))
    launcher.standins.append(k)
    launcher.logs.append(launcher.log)
    k.start()
    launcher.wait_started()
    for state in ("MASTER", "BACKUP"):
        k.write(VI.format(state))
    launcher.settle(2)
    state, log = str(launcher.state), str(launcher.log)
    commands = [("status", "--state-dir", state), ("status", "--json", "--state-dir", state),
                ("history", "--state-dir", state), ("history", "--json", "--state-dir", state),
                ("send", "--fifo", str(launcher.fifo), VI.format("FAULT")),
                ("send", "--state-dir", state, VI.format("MASTER")),
                ("wait", "--timeout", "60", "--state-dir", state),
                ("log", "1", "--log-file", log),
                ("check-config", "--handler", str(launcher.handler), "--state-dir", state, "--log-file", log),
                ("--version",)]
    for args in commands:
        res = _operator(*args)
        assert (res.returncode, res.stderr) == (0, ""), (args, res)
    res = _operator("log", "--failed", "--log-file", log)  # none failed: exit 1, and one line that says so
    assert res.returncode == 1 and res.stderr.startswith("notify-launcher log: no log line for failed events")
    assert res.stderr.count("\n") == 1, res.stderr
    k.lines += [VI.format("FAULT")]  # written through the FIFO by `send` (the invariants expect it journaled)
    launcher.settle(4)
    worker = int((launcher.state / "worker.pid").read_text().split()[0])
    report = k.stop([])  # SIGTERM, then the stand-in waits for the reader's exit (SIGKILL at +1 s)
    assert not report.killed and report.returncode == 0
    launcher.wait_for("the worker gone (linger 1 s)", lambda: not processes.running(worker))
    assert errors.read_text() == ""
    text = launcher.log_text()
    for word in ("Warning", "Exception ignored", "Traceback"):
        assert word not in text, text
