"""Command line: `notify-launcher [options] FIFO` is what keepalived runs; subcommands are for people.

Exit codes: 0 success; 1 `wait` timed out; 2 usage or configuration error; 3 the FIFO or the state
directory cannot be used.
"""

from __future__ import annotations

import signal
import time

EARLY_TERM: list[float] = []


def _early_term(signum: int, frame: object) -> None:
    """keepalived may stop us while Python is still importing: remember it; the reader honours it."""
    EARLY_TERM.append(time.monotonic())


signal.signal(signal.SIGTERM, _early_term)

import argparse  # noqa: E402  (after the handler, on purpose)
import os  # noqa: E402
import sys  # noqa: E402
import syslog  # noqa: E402

from notify_launcher import __version__  # noqa: E402
from notify_launcher.config import DEFAULT_STATE_DIR, ConfigError, load  # noqa: E402
from notify_launcher.statedir import StatePaths, StateDirError, ensure_state_dir  # noqa: E402

EXIT_USAGE = 2
EXIT_UNUSABLE = 3
COMMANDS = ("serve", "check-config", "send", "status", "history", "wait", "_worker")

READER_EPILOG = """\
keepalived.conf:
  global_defs {
      notify_fifo /run/keepalived/notify.fifo
      notify_fifo_script "/usr/local/bin/notify-launcher --config /etc/keepalived/notify-launcher.ini"
  }
keepalived appends the FIFO path as the last argument.  The handler runs as
  HANDLER... TYPE NAME STATE PRIORITY        (RS lines add the virtual server as a 5th argument)
with NL_TYPE, NL_NAME, NL_STATE, NL_PRIORITY, NL_VS and NL_SEQ in its environment.
Other commands (each has --help): serve, check-config, send, status, history, wait
"""


SERVE_EPILOG = """\
Service mode: run as a systemd service of its own (contrib/notify-launcher.service) reading
keepalived's notify_fifo, with no notify_fifo_script in keepalived.conf.  It follows the FIFO across
keepalived restarts and reloads.  Choose it when keepalived is restarted often, or when you want
the reader itself out of keepalived's hands.
example: notify-launcher serve --fifo /run/keepalived/notify.fifo --config /etc/keepalived/notify-launcher.ini
"""


def _reader_parser(serve: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="notify-launcher serve" if serve else "notify-launcher",
        epilog=SERVE_EPILOG if serve else READER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read keepalived's notify FIFO and run an action for every event: detached from "
                    "keepalived, one at a time, strictly in order, logged.")
    p.add_argument("--version", action="version", version=f"notify-launcher {__version__}")
    p.add_argument("--config", metavar="FILE", help="INI file (see keepalived.conf.example / README)")
    p.add_argument("--handler", metavar="CMD", help="command run for every event (shell-like words, no shell)")
    p.add_argument("--log-file", metavar="PATH", help="worker log (default /var/log/notify-launcher.log)")
    p.add_argument("--state-dir", metavar="DIR", help=f"journal, progress and locks (default {DEFAULT_STATE_DIR})")
    p.add_argument("--timeout", metavar="SEC", help="per-action timeout (default 120)")
    p.add_argument("--stop-grace", metavar="SEC", help="after SIGTERM, wait this long for STOP lines (default 0.5)")
    p.add_argument("--linger", metavar="SEC", help="an idle worker waits this long for more events (default 600)")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARN or ERROR (default INFO)")
    p.add_argument("--detach", metavar="MODE", help="auto, daemon (double fork) or systemd (transient unit); "
                                                    "default auto: systemd when we run in a systemd service")
    if serve:
        p.add_argument("--fifo", required=True, metavar="PATH", help="keepalived's notify_fifo path")
    else:
        p.add_argument("fifo", metavar="FIFO", help="keepalived's notify_fifo (keepalived appends it)")
    return p


def _fatal(message: str, log_file: str | None) -> None:
    """Say it everywhere someone may look: keepalived gives the script /dev/null as stderr."""
    sys.stderr.write(f"notify-launcher: {message}\n")
    syslog.openlog("notify-launcher", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_ERR, message)
    if log_file:
        from notify_launcher.log import Log
        Log(log_file, "reader").error(None, None, message)


def run_reader(argv: list[str], serve: bool = False) -> int:
    args = _reader_parser(serve).parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("handler", "log_file", "state_dir", "timeout", "stop_grace",
                                               "linger", "log_level", "detach")}
    try:
        settings = load(args.config, overrides)
    except ConfigError as exc:
        _fatal(str(exc), args.log_file)
        return EXIT_USAGE
    from notify_launcher.log import Log
    from notify_launcher.reader import FifoError, Reader, open_fifo
    from notify_launcher.security import check

    problems = check(settings)
    if problems:
        _fatal("; ".join(problems) + " (fix the owner/mode, or move it)", settings.log_file)
        return EXIT_USAGE

    log = Log(settings.log_file, "reader", settings.log_level)
    try:
        paths = ensure_state_dir(settings.state_dir)
        fifo_fd = -1 if serve else open_fifo(args.fifo)  # service mode opens (and reopens) it as it comes
    except (StateDirError, FifoError) as exc:
        _fatal(str(exc), settings.log_file)
        return EXIT_UNUSABLE
    _publish_settings(paths, settings.to_json())
    from notify_launcher.detach import choose
    detach, why = choose(settings)
    handler = " ".join(settings.handler) or "(none: events are only logged)"
    log.info(None, None, f"reader started: FIFO {args.fifo}, state {paths.root}, handler {handler}; "
                         f"workers: {detach} ({why})")
    return Reader(settings, paths, fifo_fd, args.fifo, log, detach, EARLY_TERM[0] if EARLY_TERM else None,
                  serve).run()


def _publish_settings(paths: StatePaths, text: str) -> None:
    """Write settings.json atomically, only when it changed, so a lingering worker follows the config."""
    try:
        with open(paths.settings) as fh:
            if fh.read() == text:
                return
    except OSError:
        pass
    tmp = f"{paths.settings}.{os.getpid()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(text)
    os.replace(tmp, paths.settings)


def _state_parser(name: str, description: str, example: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"notify-launcher {name}", description=description,
                                epilog=f"example: {example}")
    p.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR,
                   help=f"the launcher's state directory (default {DEFAULT_STATE_DIR})")
    return p


def run_status(argv: list[str]) -> int:
    p = _state_parser("status", "Per instance/group: last state and action result; the running action; "
                      "pending events.", "notify-launcher status --json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    from notify_launcher.status import as_json, as_text, read_status
    status = read_status(StatePaths(args.state_dir))
    print(as_json(status) if args.json else as_text(status))
    return 0


def run_check_config(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="notify-launcher check-config", description="Check the INI file, every action it names (exists, "
        "executable, #! line, safe for root), the state and log paths, and optionally keepalived.conf's "
        "notify_fifo lines (nested quotes, FIFO owner vs script user, the script itself). Exit 0 only when "
        "all is well, 2 otherwise.",
        epilog="example: notify-launcher check-config --config /etc/keepalived/notify-launcher.ini "
               "--keepalived-conf /etc/keepalived/keepalived.conf")
    p.add_argument("--config", metavar="FILE", help="the INI file")
    p.add_argument("--keepalived-conf", metavar="FILE", help="also check this keepalived.conf")
    p.add_argument("--handler", metavar="CMD", help="as the reader's option")
    p.add_argument("--state-dir", metavar="DIR", help="as the reader's option")
    p.add_argument("--log-file", metavar="PATH", help="as the reader's option")
    args = p.parse_args(argv)
    from notify_launcher.checkconfig import run
    problems = run(args.config, args.keepalived_conf,
                   {"handler": args.handler, "state_dir": args.state_dir, "log_file": args.log_file})
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        return EXIT_USAGE
    print("OK: " + ", ".join(filter(None, [args.config, args.keepalived_conf])) if args.config or
          args.keepalived_conf else "OK: defaults")
    return 0


def run_history(argv: list[str]) -> int:
    p = _state_parser("history", "The last N finished events: sequence, time, event, action result, "
                      "duration.", "notify-launcher history -n 50")
    p.add_argument("-n", type=int, default=20, metavar="N", help="how many (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    from notify_launcher.status import history_json, history_text
    paths = StatePaths(args.state_dir)
    print(history_json(paths, args.n) if args.json else history_text(paths, args.n))
    return 0


def run_send(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="notify-launcher send", description="Inject an event as keepalived would, to test actions "
        "without a failover: into keepalived's FIFO (--fifo), or straight into the journal (--state-dir).",
        epilog="example: notify-launcher send --state-dir /run/notify-launcher 'INSTANCE \"VI_1\" MASTER 100'")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--fifo", metavar="PATH", help="write the line to this FIFO (a reader must have it open)")
    where.add_argument("--state-dir", metavar="DIR", help="journal the event in this state directory")
    p.add_argument("line", metavar="LINE", help="a line as keepalived writes it")
    args = p.parse_args(argv)
    from notify_launcher.send import SendError, send_fifo, send_state
    try:
        print(send_fifo(args.fifo, args.line) if args.fifo else send_state(args.state_dir, args.line))
    except SendError as exc:
        print(f"notify-launcher send: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    return 0


def run_wait(argv: list[str]) -> int:
    p = _state_parser("wait", "Exit 0 once no event is pending or running; 1 on timeout.",
                      "notify-launcher wait --timeout 30")
    p.add_argument("--timeout", metavar="SEC", type=float, default=None, help="give up after SEC (default never)")
    args = p.parse_args(argv)
    from notify_launcher.status import read_status
    paths = StatePaths(args.state_dir)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while not read_status(paths).idle:
        if deadline is not None and time.monotonic() >= deadline:
            print(f"notify-launcher wait: still busy after {args.timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    return 0


def run_serve(argv: list[str]) -> int:
    return run_reader(argv, serve=True)


def run_unit_worker(argv: list[str]) -> int:
    """Internal: the worker inside a transient systemd unit (see systemd_unit.py)."""
    p = argparse.ArgumentParser(prog="notify-launcher _worker")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--unit", required=True)
    args = p.parse_args(argv)
    from notify_launcher.worker import run_unit_worker as run
    return run(args.state_dir, args.unit)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return {"serve": run_serve, "check-config": run_check_config, "send": run_send, "status": run_status, "history": run_history,
                "wait": run_wait, "_worker": run_unit_worker}[argv[0]](argv[1:])
    return run_reader(argv)
