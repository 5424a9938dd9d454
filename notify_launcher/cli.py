"""Command line: `notify-launcher [options] FIFO` is what keepalived runs; subcommands are for people.

Exit codes are errors.py's (the README's table).  A problem foreseen is a LauncherError carrying
its code, turned into an exit here once per audience: the reader says it everywhere someone may look
(`_fatal`), an operator command in one line on stderr (`run_operator`), never with a traceback.
Operator commands end on SIGINT (130) and SIGTERM (143) with one line too.

Only the reader (`notify-launcher [options] FIFO`, `serve`) catches SIGTERM from the first moment:
keepalived may stop it while Python is still importing, and the reader must still read the STOP
lines that follow.  Any other command keeps SIGTERM's default until it runs, so `timeout` and
`systemctl stop` end it.

Each command imports its modules when it runs: keepalived starts the reader (and kills it) on
every start and reload, so it loads nothing the operator commands need, and they load nothing
of the reader's.
"""

from __future__ import annotations

import os
import stat
import sys
import time

import _signal  # signal.py's C core: `signal` itself imports enum and functools, ~4.5 ms before SIGTERM is caught

from notify_launcher.commands import COMMANDS, NOT_THE_READER

EARLY_TERM: list[float] = []


def _early_term(signum: int, frame: object) -> None:
    """keepalived may stop us while Python is still importing: remember it; the reader honours it."""
    EARLY_TERM.append(time.monotonic())


#: The lines of setup.cfg's console script (entry point notify_launcher.cli:main) as pip writes it
#: (.venv/bin/notify-launcher) and Debian's dh_python3 (python3-installer: /usr/bin/notify-launcher).
CONSOLE_SCRIPT = frozenset({b"from notify_launcher.cli import main", b"sys.exit(main())"})


def _run_as_notify_launcher() -> bool:
    """This process is notify-launcher: `python -m notify_launcher`, the checkout's bin/notify-launcher
    (it imports notify_launcher.__main__, which runs the command), or an installed console script
    (whatever its name or link: its main file imports cli's main and exits with what it returns) --
    not a program that imports the package (a test runner, an operator's tool)."""
    if "notify_launcher.__main__" in sys.modules:
        return True
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None:
        return bool(spec.name == "notify_launcher.__main__")
    try:
        with open(getattr(main, "__file__", None) or "", "rb") as fh:
            return CONSOLE_SCRIPT <= {line.strip() for line in fh.read(4096).splitlines()}
    except OSError:
        return False


def starts_the_reader(argv: list[str]) -> bool:
    """The command line `argv` (sys.argv) starts the reader: `[options] FIFO` or `serve`."""
    return not (len(argv) > 1 and argv[1] in NOT_THE_READER)


def _pin(path: str) -> int:
    """keepalived's FIFO, opened first thing at start (judged by fifo.open_fifo later): a reload
    meanwhile unlinks it and makes a new FIFO at the path, and what keepalived wrote into ours
    before that is ours to read.  -1 if `path` is no FIFO (the command line is not keepalived's)."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return -1
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return -1


from notify_launcher import turn  # noqa: E402
from notify_launcher.owner import Seen, early  # noqa: E402

STARTER: Seen | None = None  # the keepalived process that started the reader, and keepalived, looked up at once
TURN: turn.ReadTurn | None = None  # its ticket to read the FIFO after the readers started before it
PINNED = -1  # keepalived's FIFO (the last argument), opened at once: a reload may replace it at the path
if _run_as_notify_launcher() and starts_the_reader(sys.argv):
    STARTER = early()  # first: once SIGTERM is caught, the reader counts on it being known
    # (µs each, before SIGTERM is caught, so that a reader that catches it holds both)
    PINNED = _pin(sys.argv[-1]) if len(sys.argv) > 1 else -1
    TURN = turn.early(sys.argv)  # before the imports: a reader started after us must find it
    _signal.signal(_signal.SIGTERM, _early_term)

import errno  # noqa: E402  (after the handler, on purpose)
import signal  # noqa: E402
import syslog  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from notify_launcher import __version__  # noqa: E402
from notify_launcher.config import DEFAULT_STATE_DIR, load  # noqa: E402
from notify_launcher.errors import (EXIT_INTERRUPTED, EXIT_NOTHING, EXIT_PARTIAL, EXIT_SOFTWARE,  # noqa: E402
                                    EXIT_TERMINATED, EXIT_TIMEOUT, EXIT_UNUSABLE, EXIT_USAGE, LauncherError)
from notify_launcher.statedir import StatePaths, ensure_state_dir  # noqa: E402

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs the reader's start ~3 ms to import: for mypy only
    import argparse
    from collections.abc import Callable
    from typing import Any, TypeVar

    from notify_launcher.workerlink import WorkerLink

    T = TypeVar("T")


READER_EPILOG = """\
keepalived.conf:
  global_defs {
      notify_fifo /run/keepalived/notify.fifo root
      notify_fifo_script "/usr/bin/notify-launcher --config /etc/keepalived/notify-launcher.ini" root
  }
keepalived appends the FIFO path as the last argument.  The handler runs as
  HANDLER... TYPE NAME STATE PRIORITY        (RS lines add the virtual server as a 5th argument)
with NL_TYPE, NL_NAME, NL_STATE, NL_PRIORITY, NL_VS and NL_SEQ in its environment.
on_failure runs the same way after a failed, timed-out or skipped action, with NL_RESULT, NL_EXIT,
NL_DETAIL and NL_OUTPUT (the action's last output lines) added.
Other commands (each has --help): serve, check-config, send, status, history, wait, log, import
"""


SERVE_EPILOG = """\
Service mode: run as a systemd service of its own (contrib/notify-launcher.service) reading
keepalived's notify_fifo, with no notify_fifo_script in keepalived.conf.  It follows the FIFO across
keepalived restarts and reloads.  Choose it when keepalived is restarted often, or when you want
the reader itself out of keepalived's hands.
example: notify-launcher serve --fifo /run/keepalived/notify.fifo --config /etc/keepalived/notify-launcher.ini
"""


def _parser(prog: str, raw: bool = False, **kwargs: Any) -> argparse.ArgumentParser:
    """An ArgumentParser, argparse imported only now: keepalived's command line for the reader does
    without it (`_keepalived_args`).  `raw`: the epilog keeps its line breaks."""
    import argparse

    if raw:
        kwargs["formatter_class"] = argparse.RawDescriptionHelpFormatter
    return argparse.ArgumentParser(prog=prog, **kwargs)


def _reader_parser(serve: bool) -> argparse.ArgumentParser:
    p = _parser(
        "notify-launcher serve" if serve else "notify-launcher", raw=True,
        epilog=SERVE_EPILOG if serve else READER_EPILOG,
        description="Read keepalived's notify FIFO and run an action for every event: detached from "
                    "keepalived, one at a time, strictly in order, logged.")
    p.add_argument("--version", action="version", version=f"notify-launcher {__version__}")
    _setting_options(p)
    if serve:
        p.add_argument("--fifo", required=True, metavar="PATH", help="keepalived's notify_fifo path")
    else:
        p.add_argument("fifo", metavar="FIFO", help="keepalived's notify_fifo (keepalived appends it)")
    return p


SETTING_OPTIONS = ("handler", "log_file", "state_dir", "timeout", "stop_grace", "linger", "log_level", "detach",
                   "metrics_file", "on_failure")


def _setting_options(p: argparse.ArgumentParser) -> None:
    """--config and the options that override its keys: the reader's, and check-config's, so that the
    very command line keepalived runs can be checked."""
    p.add_argument("--config", metavar="FILE", help="INI file (see keepalived.conf.example / README)")
    p.add_argument("--handler", metavar="CMD", help="command run for every event (shell-like words, no shell)")
    p.add_argument("--on-failure", metavar="CMD", help="command run after an action failed, timed out or was "
                                                        "skipped (shell-like words, no shell; default: none)")
    p.add_argument("--log-file", metavar="PATH", help="worker log (default /var/log/notify-launcher.log)")
    p.add_argument("--state-dir", metavar="DIR", help=f"journal, progress and locks (default {DEFAULT_STATE_DIR})")
    p.add_argument("--timeout", metavar="SEC", help="per-action timeout (default 120)")
    p.add_argument("--stop-grace", metavar="SEC", help="after SIGTERM, wait this long for STOP lines (default 0.5)")
    p.add_argument("--linger", metavar="SEC", help="how long the worker stays once no reader lives (default 600)")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARN or ERROR (default INFO)")
    p.add_argument("--metrics-file", metavar="PATH", help="Prometheus text file for node_exporter's textfile "
                                                          "collector, rewritten after events (default: none)")
    p.add_argument("--detach", metavar="MODE", help="auto, daemon (double fork) or systemd (transient unit); "
                                                    "default auto: systemd when we run in a systemd service")


def _fatal(message: str, log_file: str | None) -> None:
    """Say it everywhere someone may look: keepalived gives the script /dev/null as stderr."""
    sys.stderr.write(f"notify-launcher: {message}\n")
    syslog.openlog("notify-launcher", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_ERR, message)
    if log_file:
        from notify_launcher.log import Log
        Log(log_file, "reader").error(None, None, message)


def _keepalived_args(argv: list[str]) -> SimpleNamespace | None:
    """The reader's command line as keepalived runs it -- `--OPTION VALUE` or `--OPTION=VALUE` for
    --config and the settings, and the FIFO -- read without argparse, whose import and parser cost
    every start ~5 ms.  None for anything else (--help, --version, an abbreviated or unknown option,
    a value that looks like an option, not one FIFO): argparse reads that, and says what is wrong."""
    names = {"--" + name.replace("_", "-"): name for name in ("config", *SETTING_OPTIONS)}
    values: dict[str, str | None] = dict.fromkeys(names.values())
    fifos = []
    words = iter(argv)
    for word in words:
        option, equals, value = word.partition("=")
        if equals and option in names:
            values[names[option]] = value
        elif word in names:
            value = next(words, "-")
            if value.startswith("-"):
                return None
            values[names[word]] = value
        elif word.startswith("-"):
            return None
        else:
            fifos.append(word)
    return SimpleNamespace(fifo=fifos[0], **values) if len(fifos) == 1 else None


def run_reader(argv: list[str], serve: bool = False) -> int:
    args = (None if serve else _keepalived_args(argv)) or _reader_parser(serve).parse_args(argv)
    overrides = {k: getattr(args, k) for k in SETTING_OPTIONS}
    log_file = args.log_file
    try:
        settings = load(args.config, overrides)
        log_file = settings.log_file
        from notify_launcher.fifo import open_fifo  # (imported already: pin)
        from notify_launcher.security import check

        problems = check(settings)
        if problems:
            raise LauncherError("; ".join(problems), EXIT_USAGE)
        paths = StatePaths(settings.state_dir)
        _refuse_foreign_state_dir(paths)
        pinned = _pinned(args.fifo, serve)
        fifo_fd = -1 if serve else open_fifo(args.fifo, pinned)  # (service mode opens, and reopens, it as it comes)
    except LauncherError as exc:
        _fatal(str(exc), log_file)
        return exc.code
    import select

    from notify_launcher.detach import choose
    from notify_launcher.log import Log
    from notify_launcher.workerlink import WorkerLink

    log = Log(settings.log_file, "reader", settings.log_level)
    detach, why = choose(settings)
    handler = " ".join(settings.handler) or "(none: events are only logged)"
    log.info(None, None, f"reader started: FIFO {args.fifo}, state {paths.root}, handler {handler}; "
                         f"workers: {detach} ({why})")
    workers = WorkerLink(settings, paths, select.poll(), log, detach)
    _start_worker_first(workers)
    from notify_launcher.reader import Reader

    ticket = TURN if TURN is not None and TURN.fifo == args.fifo else None  # (taken for the FIFO we read?)
    reader = Reader(settings, paths, fifo_fd, args.fifo, log, workers, EARLY_TERM, serve, STARTER, ticket)
    # Leave at once: keepalived's SIGKILL comes 1 s after its SIGTERM, and Python's own finalization
    # (module teardown, garbage collection) takes 5-10 ms of a loaded 2-core machine, the time the
    # stop window keeps for the lines that say what was lost.  Nothing of the reader's is buffered:
    # the log and the journal are written with os.write.
    os._exit(reader.run())


def _start_worker_first(workers: WorkerLink) -> None:
    """Announce us to the worker, or spawn the standby, before the reader imports and builds the rest of
    itself (~5 ms: the journal's modules, the stop classifier, the predecessor check): the worker's own
    start-up (python-daemon, its modules, the action cgroup: ~11 ms) runs on another CPU meanwhile,
    and a line keepalived wrote before it started us waits for both (benchmarks: first event at start).
    The kernel reaps the double fork's child (SIGCHLD ignored, as the reader keeps it): no zombie."""
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
    workers.start()


def _pinned(fifo: str, serve: bool) -> int:
    """The FIFO opened at start (PINNED), if it is the one the reader reads; else closed: -1."""
    if PINNED >= 0 and (serve or sys.argv[-1] != fifo):
        os.close(PINNED)
        return -1
    return PINNED


def _refuse_foreign_state_dir(paths: StatePaths) -> None:
    """A state directory we may not use (a symlink, another user's) is a configuration error; one we
    cannot create or make 0700 now (a full or read-only disk) is not: the reader says so in its log
    and retries (upkeep.StateRepair), events wait in memory."""
    try:
        os.makedirs(paths.root, mode=0o700, exist_ok=True)
    except OSError:
        if not os.path.lexists(paths.root):
            return
    try:
        ensure_state_dir(paths.root)
    except OSError:
        return


def _state_parser(name: str, description: str, example: str) -> argparse.ArgumentParser:
    p = _parser(f"notify-launcher {name}", description=description, epilog=f"example: {example}")
    p.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR,
                   help=f"the launcher's state directory (default {DEFAULT_STATE_DIR})")
    return p


def _os_problem(exc: OSError) -> LauncherError:
    """An OSError met on the state directory, a FIFO or a settings file, as what is wrong and what
    to do (the advice depends on the errno: a permission problem is not a missing directory)."""
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = "run it as the user the reader runs as (usually root: sudo)"
    elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
        todo = (f"check --state-dir: it must be the reader's state_dir (default {DEFAULT_STATE_DIR}), "
                f"which the reader creates when keepalived starts it")
    elif exc.errno == errno.ENOSPC:
        todo = "free space on the state directory's filesystem"
    else:
        todo = "check the state directory and its files"
    return LauncherError(f"{where}{exc.strerror or exc}; {todo}", EXIT_UNUSABLE)


def _trusted(what: str, path: str, created: bool = False) -> None:
    """As root, a path someone else could change is refused as the reader refuses it (security.py)."""
    from notify_launcher.security import refusal
    why = refusal(what, path, created)
    if why:
        raise LauncherError(why, EXIT_USAGE)


def _read_state(state_dir: str, read: Callable[[StatePaths], T]) -> T:
    """`read(paths)` on an existing state directory (a missing one is an error, not "no events");
    whatever the system refuses becomes a LauncherError that says what to do."""
    _trusted("state_dir", state_dir, created=True)
    try:
        if not stat.S_ISDIR(os.stat(state_dir).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), state_dir)
        return read(StatePaths(state_dir))
    except OSError as exc:
        raise _os_problem(exc) from None


def run_status(argv: list[str]) -> int:
    p = _state_parser("status", "Per instance/group: last state and action result; the running action; "
                      "pending events.", "notify-launcher status --json")
    p.add_argument("--json", action="store_true", help="machine-readable output (every instance/group, and the "
                   "summary)")
    p.add_argument("--all", action="store_true", help="the table of every instance/group, also when there are "
                   "more than 40 (default: a summary, and the table when it is short)")
    args = p.parse_args(argv)
    from notify_launcher.status import as_json, as_text, read_status
    print(_read_state(args.state_dir, lambda paths: as_json(read_status(paths)) if args.json
                      else as_text(read_status(paths), every=args.all)))
    return 0


def run_check_config(argv: list[str]) -> int:
    p = _parser(
        "notify-launcher check-config", description="Check the INI file, every action it names (exists, "
        "executable, #! line, safe for root), the state and log paths, and optionally keepalived.conf's "
        "notify_fifo lines (nested quotes, FIFO owner vs script user, the script itself) and its notify "
        "directives that would run an action twice (keepalived's and the launcher's). Exit 0 only when "
        "all is well, 2 otherwise.",
        epilog="example: notify-launcher check-config --config /etc/keepalived/notify-launcher.ini "
               "--keepalived-conf /etc/keepalived/keepalived.conf")
    p.add_argument("--keepalived-conf", metavar="FILE", help="also check this keepalived.conf")
    _setting_options(p)
    args = p.parse_args(argv)
    from notify_launcher.checkconfig import run
    try:
        problems = run(args.config, args.keepalived_conf, {k: getattr(args, k) for k in SETTING_OPTIONS})
    except OSError as exc:  # a path the checks could not look at is a problem like the others
        problems = [f"{exc.filename or ''}: cannot check: {exc.strerror or exc} (run it as the user "
                    f"keepalived runs the script as, usually root)"]
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
    if args.n < 1:
        p.error("-n: expected a number >= 1")
    from notify_launcher.status import history_json, history_text
    show = history_json if args.json else history_text
    print(_read_state(args.state_dir, lambda paths: show(paths, args.n)))
    return 0


def run_send(argv: list[str]) -> int:
    p = _parser(
        "notify-launcher send", description="Inject an event as keepalived would, to test actions "
        "without a failover: into keepalived's FIFO (--fifo), or straight into the journal (--state-dir).",
        epilog="example: notify-launcher send --state-dir /run/notify-launcher 'INSTANCE \"VI_1\" MASTER 100'")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--fifo", metavar="PATH", help="write the line to this FIFO (a reader must have it open)")
    where.add_argument("--state-dir", metavar="DIR", help="journal the event in this state directory")
    p.add_argument("line", metavar="LINE", help="a line as keepalived writes it")
    args = p.parse_args(argv)
    from notify_launcher.send import send_fifo, send_state
    if args.state_dir:
        _trusted("state_dir", args.state_dir, created=True)
    try:
        said = send_fifo(args.fifo, args.line) if args.fifo else send_state(args.state_dir, args.line)
    except OSError as exc:
        raise _os_problem(exc) from None
    print(said)
    return 0


def run_wait(argv: list[str]) -> int:
    p = _state_parser("wait", "Exit 0 once no event is pending or running; 1 on timeout.",
                      "notify-launcher wait --timeout 30")
    p.add_argument("--timeout", metavar="SEC", type=float, default=None, help="give up after SEC (default never)")
    args = p.parse_args(argv)
    from notify_launcher.status import StatusReader
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    readers: dict[str, StatusReader] = {}  # one per state directory: each poll reads only what is new

    def idle(paths: StatePaths) -> bool:
        return readers.setdefault(paths.root, StatusReader(paths)).read().idle
    while not _read_state(args.state_dir, idle):
        if deadline is not None and time.monotonic() >= deadline:
            raise LauncherError(f"still busy after {args.timeout:g}s; `notify-launcher status` shows what runs "
                                f"and what is pending", EXIT_TIMEOUT)
        time.sleep(0.05)
    return 0


def run_log(argv: list[str]) -> int:
    p = _parser(
        "notify-launcher log", description="The log lines of one event or a range of events (found by the "
        "#SEQ in every line), of a period, or of the failed events: from the log file and its rotated (and "
        "gzip-compressed) copies, oldest first.  Exit 1 when no line matches.",
        epilog="examples: notify-launcher log 1234;  notify-launcher log 12-20;  "
               "notify-launcher log --failed --since 1h")
    p.add_argument("seqs", nargs="?", metavar="SEQ[-SEQ]", help="an event's number (as `history` shows it), or a range")
    p.add_argument("--since", metavar="WHEN", help="only lines since then: 90s, 30m, 1h, 2d ago, or "
                                                   "'YYYY-MM-DD HH:MM' (default: all); alone, it shows the "
                                                   "lines about no event (#- -) too")
    p.add_argument("--failed", action="store_true", help="only events with an ERROR line (an action failed, "
                                                         "timed out, or was skipped after a crash)")
    p.add_argument("--config", metavar="FILE", help="take log_file from this INI file")
    p.add_argument("--log-file", metavar="PATH", help="the log file (default: the config's log_file, else "
                                                      "/var/log/notify-launcher.log)")
    args = p.parse_args(argv)
    from notify_launcher.logview import Query, parse_seqs, parse_since, printable, select
    if args.seqs is None and args.since is None and not args.failed:
        p.error("say which lines: SEQ, SEQ-SEQ, --since or --failed")
    first, last = parse_seqs(args.seqs) if args.seqs is not None else (None, None)
    since = parse_since(args.since, time.time()) if args.since is not None else None
    log_file = load(args.config, {"log_file": args.log_file}).log_file
    _trusted("log_file", log_file, created=True)
    lines, span = select(log_file, Query(first, last, since, args.failed))
    shown = 0
    for line in lines:
        sys.stdout.buffer.write(printable(line))
        shown += 1
    sys.stdout.flush()
    for error in span.errors:
        _say("log", error)
    if span.errors:
        return EXIT_UNUSABLE
    if not shown:
        what = " ".join(filter(None, [
            "failed events" if args.failed else "",
            (f"#{first}" if first == last else f"#{first}..#{last}") if first is not None else "",
            f"since {since}" if since else ""]))
        held = f"events #{span.low}..#{span.high}" if span.low is not None else "no event lines"
        raise LauncherError(f"no log line for {what} in {', '.join(span.files)} (they hold {held}); "
                            f"older lines may be in rotations logrotate has removed", EXIT_NOTHING)
    return 0


def run_serve(argv: list[str]) -> int:
    return run_reader(argv, serve=True)


def run_unit_worker(argv: list[str]) -> int:
    """Internal: the worker inside a transient systemd unit (see systemd_unit.py)."""
    p = _parser("notify-launcher _worker")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--unit", required=True)
    p.add_argument("--reader", type=int, required=True)
    p.add_argument("--reader-start", type=int, required=True)  # a later process with the reader's pid is not it
    args = p.parse_args(argv)
    from notify_launcher.identity import ProcessId
    from notify_launcher.worker import run_unit_worker as run
    return run(args.state_dir, args.unit, ProcessId(args.reader, args.reader_start))


IMPORT_EPILOG = """\
It prints an INI whose rules run, for each event, the commands keepalived's notify directives run
for it (keepalived's order, argv, user and group), then, as INI comments: the global_defs lines to
add, every directive to remove or change as FILE:LINE, and what was not converted and why.
example: notify-launcher import /etc/keepalived/keepalived.conf --write /etc/keepalived/notify-launcher.ini
"""


def run_import(argv: list[str]) -> int:
    p = _parser(
        "notify-launcher import", raw=True, epilog=IMPORT_EPILOG,
        description="Convert keepalived's notify directives (notify_master, notify, notify_up, quorum_up, ... of "
                    "every block) into [match] rules. Exit 0 when every directive was converted, 4 when some "
                    "could not be (they are listed: keep them in keepalived.conf).")
    p.add_argument("keepalived_conf", nargs="?", default="/etc/keepalived/keepalived.conf", metavar="KEEPALIVED_CONF",
                   help="default /etc/keepalived/keepalived.conf (includes are followed as keepalived does)")
    p.add_argument("--write", metavar="PATH", help="write the INI to PATH (refused if it exists, unless --force) "
                                                   "and print only the keepalived.conf changes")
    p.add_argument("--force", action="store_true", help="let --write replace an existing file")
    p.add_argument("--config-id", metavar="ID", help="keepalived's -i, for @ID lines (default: the host name up "
                                                     "to its first dot, as keepalived)")
    p.add_argument("--fifo", metavar="PATH", help="the FIFO global_defs names (default /run/keepalived/notify.fifo; "
                                                  "an LVS site's: /run/keepalived-notify.fifo)")
    p.add_argument("--launcher", default="/usr/bin/notify-launcher", metavar="PATH",
                   help="the command global_defs' notify_fifo_script runs (default /usr/bin/notify-launcher)")
    args = p.parse_args(argv)
    from notify_launcher import kaconf, kaimport
    ini_path = os.path.abspath(args.write) if args.write else "/etc/keepalived/notify-launcher.ini"
    if args.write and os.path.lexists(ini_path) and not args.force:
        raise LauncherError(f"{ini_path} exists; add --force to replace it, or choose another path", EXIT_USAGE)
    found = kaconf.find(kaconf.read(os.path.abspath(args.keepalived_conf), args.config_id))
    conv = kaimport.convert(found, ini_path, args.launcher, args.fifo)
    ini = kaimport.render_ini(conv, os.path.abspath(args.keepalived_conf))
    wrong = kaimport.verify(ini, conv, found)
    if wrong:
        raise LauncherError("the rules would not run what keepalived runs; this is a bug: please report it with "
                            "your keepalived.conf: " + "; ".join(wrong), EXIT_SOFTWARE)
    if args.write:
        from notify_launcher.statedir import write_atomic
        try:
            write_atomic(ini_path, ini.encode(), 0o644)
        except OSError as exc:
            raise _os_problem(exc) from None
        sys.stdout.write(f"# wrote {ini_path}\n" + kaimport.render_report(conv))
    else:
        sys.stdout.write(ini + kaimport.render_report(conv))
    return EXIT_PARTIAL if conv.refused else 0


OPERATOR_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "check-config": run_check_config, "send": run_send, "status": run_status, "history": run_history,
    "wait": run_wait, "log": run_log, "import": run_import}


def _say(command: str, message: str) -> None:
    """One line on stderr, whatever the message holds (a path may contain a newline)."""
    one_line = " ".join(message.split("\n"))
    sys.stderr.write(f"notify-launcher {command}: {one_line}\n")


class _Terminated(BaseException):
    """SIGTERM, raised as Python raises KeyboardInterrupt for SIGINT: not an error, so that no
    `except Exception` on the way takes it for one."""


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated


def run_operator(command: str, argv: list[str]) -> int:
    """An operator command, with no traceback ever: a foreseen problem is its LauncherError, anything
    else is named in one line as a bug to report (EX_SOFTWARE); SIGINT and SIGTERM end it with one
    line too.  Not for the reader and the worker: they log their own errors where keepalived's
    /dev/null stderr cannot swallow them."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return OPERATOR_COMMANDS[command](argv)
    except LauncherError as exc:
        _say(command, str(exc))
        return exc.code
    except BrokenPipeError:  # `history | head`: the reader of our output has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        _say(command, "interrupted")
        return EXIT_INTERRUPTED
    except _Terminated:
        _say(command, "terminated (SIGTERM)")
        return EXIT_TERMINATED
    except Exception as exc:
        _say(command, f"unexpected error: {type(exc).__name__}: {exc}; this is a bug: please report it "
                      f"with the command line and this message")
        return EXIT_SOFTWARE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in OPERATOR_COMMANDS:
        return run_operator(argv[0], argv[1:])
    if argv and argv[0] in COMMANDS:
        return {"serve": run_serve, "_worker": run_unit_worker}[argv[0]](argv[1:])
    return run_reader(argv)
