"""`notify-launcher log`: an event's lines across log files that the real logrotate rotated and
compressed (the README's snippet: compress, delaycompress), oldest first; its errors."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

from support import LAUNCHER, recorder
from support.launcher import Launcher
from support.marks import needs

pytestmark = needs("logrotate (scripts/setup installs it)", shutil.which("logrotate") is not None)

VI = 'INSTANCE "VI_{}" {} 100'


def _log(launcher: Launcher, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAUNCHER, "log", "--log-file", str(launcher.log), *args], capture_output=True, text=True,
                          timeout=60)


def _all_lines(launcher: Launcher) -> list[str]:
    """Every line of the log, oldest file first, as an administrator would piece it together."""
    out: list[str] = []
    for n in (3, 2):
        out += gzip.decompress((launcher.dir / f"launcher.log.{n}.gz").read_bytes()).decode().splitlines()
    for name in ("launcher.log.1", "launcher.log"):
        out += (launcher.dir / name).read_text().splitlines()
    return out


def _of(lines: list[str], *seqs: int) -> list[str]:
    """The lines of these events: their 5th field (after date, time, role[pid], level) is #SEQ."""
    return [line for line in lines if (m := re.match(r"\S+ \S+ \S+ \S+ +#(\d+) ", line)) and int(m[1]) in seqs]


def test_log_finds_events_across_rotated_and_compressed_files(launcher: Launcher) -> None:
    launcher.handler = recorder.install(launcher.dir / "act.sh", records=launcher.rec, then="""
echo "acting on $2 $3"
[ "$3" = BACKUP ] && echo "cannot demote $2: route busy" >&2 && exit 3""")
    conf = launcher.dir / "logrotate.conf"
    conf.write_text(f"{launcher.log} {{\n    rotate 8\n    compress\n    delaycompress\n    missingok\n"
                    f"    notifempty\n    create 0640 root root\n}}\n")

    def rotate() -> None:
        # The reader and the worker look for a rotation before every line (log.py): each one's next
        # line goes to the new file, so each event's lines land in one known file.
        subprocess.run(["logrotate", "-f", "-s", str(launcher.dir / "lr.state"), str(conf)], check=True)

    def logged(seq: int) -> bool:
        """Both sides of event `seq` are in the current file: the reader's "received" (written after
        its ring, so possibly after the worker's end) and the worker's "action ended"."""
        text = launcher.log_text()
        return all(re.search(rf"#{seq} .*\| {what}", text) for what in ("received", "action ended"))

    k = launcher.keepalived()
    k.start()
    for seq, line in enumerate((VI.format(1, "MASTER"), VI.format(1, "BACKUP"), VI.format(2, "MASTER")), 1):
        k.write(line)
        launcher.settle(seq)
        launcher.wait_for(f"event #{seq}'s log lines", lambda seq=seq: logged(seq))
        rotate()
    k.write(VI.format(1, "MASTER"))
    launcher.settle(4)
    k.stop([])
    launcher.settle(5)
    assert sorted(p.name for p in launcher.dir.glob("launcher.log*")) == [
        "launcher.log", "launcher.log.1", "launcher.log.2.gz", "launcher.log.3.gz"]
    lines = _all_lines(launcher)

    res = _log(launcher, "1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == _of(lines, 1) and "out: acting on VI_1 MASTER" in res.stdout
    assert _of(lines, 1)[0] in gzip.decompress(
        (launcher.dir / "launcher.log.3.gz").read_bytes()).decode()  # it came from the oldest, compressed file
    res = _log(launcher, "2-4")
    assert res.returncode == 0 and res.stdout.splitlines() == _of(lines, 2, 3, 4)
    res = _log(launcher, "--failed")
    assert res.returncode == 0 and res.stdout.splitlines() == _of(lines, 2)
    assert "err: cannot demote VI_1: route busy" in res.stdout and "action ended: exit 3" in res.stdout
    res = _log(launcher, "--since", "1h")  # a period: also the lines about no event (`#- -`)
    assert res.returncode == 0 and res.stdout.splitlines() == lines
    assert "#- - | reader started" in res.stdout and "#- - | reader exiting" in res.stdout

    res = _log(launcher, "99")
    assert res.returncode == 1 and res.stdout == ""
    assert (f"notify-launcher log: no log line for #99 in {launcher.dir}/launcher.log.3.gz, "
            f"{launcher.dir}/launcher.log.2.gz, {launcher.dir}/launcher.log.1, {launcher.log} "
            f"(they hold events #1..#5)") in res.stderr
    res = _log(launcher, "--failed", "--since", "2099-01-01 00:00")
    assert res.returncode == 1 and "no log line for failed events since 2099-01-01 00:00:00" in res.stderr

    (launcher.dir / "launcher.log.4.gz").write_bytes(b"not gzip at all")  # damaged: named, the rest shown
    res = _log(launcher, "1")
    assert res.returncode == 3 and res.stdout.splitlines() == _of(lines, 1)
    assert f"notify-launcher log: {launcher.dir}/launcher.log.4.gz: cannot read: " in res.stderr
    assert "its lines are left out" in res.stderr


def test_log_errors_are_one_clear_line(tmp_path: Path) -> None:
    res = subprocess.run([LAUNCHER, "log", "--log-file", str(tmp_path / "none" / "nl.log"), "1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3
    assert res.stderr == (f"notify-launcher log: {tmp_path}/none: No such file or directory; check --log-file "
                          f"(or log_file in the config)\n")
    res = subprocess.run([LAUNCHER, "log", "--log-file", str(tmp_path / "nl.log"), "1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "nl.log: no such file (nor rotated copies of it)" in res.stderr
    for args, message in ((["x-y"], "'x-y' is not an event number or range (e.g. 1234 or 12-20)"),
                          (["9-3"], "'9-3': the range goes backwards"),
                          (["--since", "soon"], "'soon' is not a time: expected e.g. 90s, 30m, 1h, 2d")):
        res = subprocess.run([LAUNCHER, "log", "--log-file", str(tmp_path / "nl.log"), *args],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and message in res.stderr, res.stderr
    res = subprocess.run([LAUNCHER, "log"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "say which lines: SEQ, SEQ-SEQ, --since or --failed" in res.stderr


def test_log_shows_control_characters_in_a_log_file_escaped(tmp_path: Path) -> None:
    """A log file that holds raw control characters (written by hand, or before they were escaped)
    reaches the terminal with them as backslash escapes, invalid UTF-8 too."""
    path = tmp_path / "nl.log"
    path.write_bytes(b"2026-11-25 15:02:17.480 worker[1] INFO  #1 - | out: \x1b]52;c;cm0gLXJm\x07\x1b[2K\r\xc2\x9b\xff\n")
    res = subprocess.run([LAUNCHER, "log", "--log-file", str(path), "1"], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == (b"2026-11-25 15:02:17.480 worker[1] INFO  #1 - | out: \\x1b]52;c;cm0gLXJm\\x07\\x1b[2K"
                          b"\\x0d\\x9b\\xff\n")
