"""What keeps the reader's start-up short, asserted as structure, never as a time: keepalived
writes an address owner's MASTER before its notify_fifo_script runs, so that event waits for the
reader's whole start (benchmarks/first_event.py measures it).

Real readers (the keepalived stand-in) and real workers; the `launcher` fixture ends every process
a test leaves."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import LAUNCHER, ROOT, VI
from support.launcher import Launcher
from support.marks import needs
from support.standin import Keepalived

from notify_launcher import cli

#: Modules the reader's start-up does without, and what they would cost every start (figures:
#: benchmarks/README.md, "The first event"): argparse's import and parser (~5 ms; keepalived's
#: command line is read by cli._keepalived_args), the socket module (~2 ms; the doorbell is
#: _socket's, handoff._datagram_socket), dataclasses (~5 ms with inspect, ast, dis and tokenize, and
#: ~0.5-1 ms per class: value.Value instead), hashlib (~2.5 ms, OpenSSL's _hashlib: settingsfile
#: hashes with CPython's builtin SHA-256), runpy (~3 ms with importlib.util: bin/notify-launcher
#: imports notify_launcher.__main__), typing (~2-4 ms: names only annotations use are imported
#: under `if TYPE_CHECKING:`, TYPE_CHECKING = False).
NOT_IMPORTED = {"argparse", "socket", "dataclasses", "inspect", "hashlib", "_hashlib", "runpy", "importlib.util",
                "typing"}


def _imported(importtime: str) -> set[str]:
    """The modules a `python -X importtime` run's stderr names."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_a_reader_started_as_keepalived_starts_it_imports_none_of_the_costly_modules(launcher: Launcher) -> None:
    """The new reader of a reload, under -X importtime, through its first event and its stop.  The
    worker stands by for it (linger 600 s), so the new reader forks none, and every line of
    its stderr is its own (a worker's child imports python-daemon, which imports socket)."""
    k = launcher.keepalived("--linger", "600")
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    importtime = launcher.dir / "importtime"
    k.script = ["sh", "-c", f'PYTHONPROFILEIMPORTTIME=1 exec "$0" "$@" 2>{importtime}', *k.script]
    k.reload().join()
    launcher.wait_for("the RELOAD record of the old reader", lambda: launcher.last_seq() >= 2)
    k.write(VI.format("BACKUP"))
    launcher.settle(3)
    k.stop([VI.format("STOP")])
    modules = _imported(importtime.read_text())
    assert "notify_launcher.reader" in modules, "no -X importtime output from the new reader"
    assert "daemon" not in modules, "the new reader spawned a worker: its stderr holds the worker's imports too"
    assert not modules & NOT_IMPORTED, f"the reader imported {sorted(modules & NOT_IMPORTED)}"


#: Modules none of ours imports at run time on a worker's way to its first action, and what each
#: cost every start: `typing` ~2-4 ms with re (annotations need it only under `if TYPE_CHECKING:`);
#: hashlib ~2 ms of OpenSSL (CPython's builtin hashes do: settingsfile._sha256).
NOT_AT_RUN_TIME = {"typing", "hashlib"}
#: Not loaded at all when a worker starts its first action: dataclasses (~5 ms with inspect, ast,
#: dis, tokenize, and ~0.5-0.9 ms per class it makes), the progress records' TypedDicts (annotations
#: only), psutil (~15 ms: imported once an action ends, actions.py); and what only some starts need
#: (~0.1-0.2 ms a module): recovery (a worker died with work in hand), metrics (a metrics file).
NOT_BEFORE_THE_FIRST_SPAWN = {"dataclasses", "notify_launcher.records", "psutil", "notify_launcher.recovery",
                              "notify_launcher.metrics"}

#: On the launcher's PYTHONPATH: writes the modules a worker has loaded when it starts its first
#: action (the parent's posix_spawn, or a forked child's exec) into $NL_TEST_SPAWN_MODULES.
_AT_SPAWN = """import os, sys

def _at_spawn(event, args):
    if event in ("os.posix_spawn", "os.exec") and "notify_launcher.worker" in sys.modules:
        try:
            fd = os.open(os.environ["NL_TEST_SPAWN_MODULES"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except (KeyError, FileExistsError):
            return
        os.write(fd, "\\n".join(sorted(sys.modules)).encode())
        os.close(fd)

sys.addaudithook(_at_spawn)
"""


def _runtime_imports(module: str) -> set[str]:
    """What importing `module` imports: its top-level import statements, but those under `if
    TYPE_CHECKING:` and in `except` clauses (a fallback, as settingsfile's hashlib); a function's
    imports run when it is called."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.If):
                for_mypy = isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                visit(node.orelse if for_mypy else node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)

    visit(ast.parse(Path(spec.origin).read_text()).body)
    return found


def test_a_worker_starts_its_first_action_without_typing_hashlib_dataclasses_or_psutil(launcher: Launcher) -> None:
    """A real reader spawns a real worker; at the worker's first spawn (an audit hook, through
    sitecustomize on the launcher's PYTHONPATH) no module of ours it has loaded imports typing or
    hashlib at run time, and nothing of NOT_BEFORE_THE_FIRST_SPAWN is loaded."""
    hook = launcher.dir / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_AT_SPAWN)
    loaded = launcher.dir / "loaded"
    k = launcher.keepalived()
    k.script = ["env", f"PYTHONPATH={hook}", f"NL_TEST_SPAWN_MODULES={loaded}", *k.script]
    k.start()
    k.write(VI.format("MASTER"))
    launcher.settle(1)
    k.stop([VI.format("STOP")])
    modules = set(loaded.read_text().split())
    assert "notify_launcher.drain" in modules, sorted(modules)
    assert not modules & NOT_BEFORE_THE_FIRST_SPAWN, sorted(modules & NOT_BEFORE_THE_FIRST_SPAWN)
    offenders = {m: _runtime_imports(m) & NOT_AT_RUN_TIME for m in sorted(modules)
                 if m.startswith("notify_launcher.")}
    assert not {m: found for m, found in offenders.items() if found}


_WORDS = st.sampled_from(["--config", "--handler", "--timeout", "--linger", "--log-file", "--hand", "--timeout=5",
                          "--handler=/bin/x y", "--state-dir=", "--on-failure", "--help", "--version", "-h", "--",
                          "-1", "-", "/run/k.fifo", "/other fifo", "a=b", "--bogus", "600", ""])


@given(st.lists(_WORDS, max_size=7))
def test_keepalived_command_lines_read_without_argparse_read_as_argparse_reads_them(argv: list[str]) -> None:
    """`_keepalived_args` reads a command line only as argparse would, else leaves it to argparse."""
    fast = cli._keepalived_args(argv)
    if fast is None:
        return
    try:
        slow = cli._reader_parser(serve=False).parse_args(argv)
    except SystemExit:
        raise AssertionError(f"argparse refuses {argv}, read as {fast}") from None
    assert vars(fast) == vars(slow)


def test_the_command_line_keepalived_runs_is_read_without_argparse() -> None:
    argv = ["--config", "/etc/keepalived/notify-launcher.ini", "/run/keepalived/notify.fifo"]
    assert cli._keepalived_args(argv) is not None


def test_the_checkout_wrapper_runs_through_a_symlinked_bin_directory(tmp_path: Path) -> None:
    """bin/notify-launcher finds its checkout through any symlink on the way, a directory's too
    (here the checkout's bin/, linked as `nl`), run from / as keepalived runs it.  Resolving only
    the file itself left `top` without /bin/: python3 from PATH ran without the checkout (exit 1:
    no module named notify_launcher).  (Red team, 2026-12-05.)"""
    link = tmp_path / "nl"
    link.symlink_to(os.path.dirname(os.path.realpath(LAUNCHER)))
    res = subprocess.run([str(link / "notify-launcher"), "--version"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/root"}, cwd="/")
    assert res.returncode == 0 and res.stdout.startswith("notify-launcher "), (res.returncode, res.stdout, res.stderr)


@needs("strace (Debian's strace: scripts/setup installs it)", shutil.which("strace") is not None)
def test_the_checkout_wrapper_runs_the_venvs_python_without_site(tmp_path: Path) -> None:
    """keepalived starts the wrapper on every start and reload, and a line already in the FIFO waits
    for it (benchmarks: first event): it names the checkout once (readlink -f) and execs the .venv's
    interpreter with -S (site.py's work skipped; its site-packages and a sitecustomize still there:
    the reader runs)."""
    link = tmp_path / "nl"
    link.symlink_to(os.path.realpath(LAUNCHER))
    for path in (os.path.realpath(LAUNCHER), str(link)):
        trace = tmp_path / "execs"
        res = subprocess.run(["strace", "-f", "-qq", "-s", "4096", "-e", "trace=execve", "-e", "signal=none",
                              "-o", str(trace), path, "--version"], capture_output=True, text=True, cwd="/")
        assert res.returncode == 0 and res.stdout.startswith("notify-launcher "), (res.stdout, res.stderr)
        execs = [line for line in trace.read_text().splitlines() if "execve(" in line and line.endswith("= 0")]
        assert [os.path.basename(line.split('"')[1]) for line in execs] == [os.path.basename(path), "readlink",
                                                                             "python"], execs
        assert '["' + os.path.realpath(ROOT) + '/.venv/bin/python", "-S", "-c", ' in execs[-1], execs[-1]


def test_the_checkout_wrapper_never_imports_from_the_working_directory(tmp_path: Path) -> None:
    """docs/security.md: root runs nothing a non-root user can change.  `python -m` puts the working
    directory first on sys.path, so root running an operator command from a directory another user
    writes ran that user's notify_launcher/__main__.py.  (Red team, 2026-12-05.)"""
    planted = tmp_path / "notify_launcher"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    (planted / "__main__.py").write_text("print('PLANTED CODE RAN')\n")
    (tmp_path / "runpy.py").write_text("print('PLANTED CODE RAN')\n")
    res = subprocess.run([LAUNCHER, "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and "PLANTED" not in res.stdout + res.stderr, (res.stdout, res.stderr)


#: setup.cfg's console script as Debian's dh_python3 writes it (python3-installer): the .deb's
#: /usr/bin/notify-launcher (tests/test_deb.py builds it); pip's is the venv's bin/notify-launcher.
DEB_CONSOLE_SCRIPT = """#!/usr/bin/python3
# -*- coding: utf-8 -*-
import re
import sys
from notify_launcher.cli import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""


@pytest.mark.parametrize("generator", ["pip", "dh_python3"])
def test_the_console_script_under_any_name_runs_as_the_launcher(tmp_path: Path, generator: str) -> None:
    """The installed console script catches SIGTERM from its first moment, as pip and Debian write
    it and whatever its name (a symlink or a copy)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import atexit, signal\n"
        "atexit.register(lambda: print('SIGTERM:', getattr(signal.getsignal(signal.SIGTERM), '__name__', 'default')))\n")
    script = tmp_path / "nl-renamed"
    script.write_text((Path(sys.executable).parent / "notify-launcher").read_text() if generator == "pip"
                      else DEB_CONSOLE_SCRIPT)
    res = subprocess.run([sys.executable, str(script), "--version"], capture_output=True, text=True, cwd="/",
                         env={**os.environ, "PYTHONPATH": f"{hook}:{ROOT}"})
    assert res.stdout.split("\n")[1:] == ["SIGTERM: _early_term", ""], (res.stdout, res.stderr)


def test_a_script_that_imports_the_package_is_ended_by_sigterm(tmp_path: Path) -> None:
    """A program that only imports the package (an operator's or a monitoring tool's script) keeps
    SIGTERM's default: `timeout`, `systemctl stop` and kill end it.  Its text naming notify_launcher
    does not make it the launcher (it got the reader's early handler, and SIGTERM was only noted)."""
    tool = tmp_path / "tool.py"
    tool.write_text("import sys\nimport notify_launcher.cli\nprint('ready', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, str(tool)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd="/")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def test_a_checkout_whose_path_holds_a_colon_never_imports_from_the_working_directory(tmp_path: Path) -> None:
    """The same, for a checkout at /srv/nl:x (a release directory named by its time, 10:00): handed
    to Python through PYTHONPATH, split at ':', it gave sys.path the *relative* entry x, looked up
    from the working directory.  The wrapper and the worker's transient unit (systemd_unit) hand
    the checkout over as an argument."""
    checkout = tmp_path / "nl:x"
    (checkout / "bin").mkdir(parents=True)
    shutil.copy(LAUNCHER, checkout / "bin")
    (checkout / "notify_launcher").symlink_to(ROOT / "notify_launcher")
    (checkout / ".venv").symlink_to(sys.prefix)
    cwd = tmp_path / "writable-by-others"
    for planted in (cwd / "x" / "notify_launcher", cwd / "notify_launcher"):
        planted.mkdir(parents=True)
        (planted / "__init__.py").write_text("print('PLANTED CODE RAN')\n")
        (planted / "__main__.py").write_text("print('PLANTED CODE RAN')\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root"}
    wrapper = subprocess.run([str(checkout / "bin" / "notify-launcher"), "--version"], capture_output=True, text=True,
                             cwd=cwd, env=env)
    assert wrapper.returncode == 0 and "PLANTED" not in wrapper.stdout + wrapper.stderr, (wrapper.stdout, wrapper.stderr)
    unit = ("import subprocess, sys\n"  # a worker's command line as the reader of this checkout gives it to systemd-run
            "from notify_launcher.systemd_unit import worker_command\n"
            "command = worker_command('--version')\n"  # one line each: systemd makes it the unit's description
            "print(sys.argv[1] in command and not any('\\n' in word for word in command),\n"
            "      subprocess.run(command, cwd=sys.argv[2], capture_output=True, text=True))\n")
    worker = subprocess.run([str(checkout / ".venv" / "bin" / "python"),
                             "-c", f"import sys\nsys.path.insert(0, sys.argv[1])\n{unit}", str(checkout), str(cwd)],
                            capture_output=True, text=True, cwd="/", env=env)
    assert worker.stdout.startswith("True ") and "PLANTED" not in worker.stdout + worker.stderr, (worker.stdout,
                                                                                                  worker.stderr)
    assert "stdout='notify-launcher " in worker.stdout, worker.stdout


def test_settings_versions_are_named_by_hashlibs_sha256_also_without_the_builtin_one() -> None:
    """settingsfile hashes with CPython's builtin SHA-256 (_sha256; _sha2 from 3.12 on), and with
    hashlib's where a build leaves the builtins out (FIPS): the same names either way."""
    check = ("import hashlib, sys\n"
             "if sys.argv[1] == 'without': sys.modules['_sha256'] = sys.modules['_sha2'] = None\n"
             "from notify_launcher import settingsfile\n"
             "print(settingsfile.sha256.__module__, settingsfile._hash(b'x' * 999) == "
             "hashlib.sha256(b'x' * 999).hexdigest()[:16])")
    for builtin in ("with", "without"):
        res = subprocess.run([sys.executable, "-c", check, builtin], capture_output=True, text=True, check=True)
        assert res.stdout.split()[1] == "True", (builtin, res.stdout, res.stderr)
        assert (res.stdout.split()[0] in ("_sha256", "_sha2")) == (builtin == "with"), res.stdout


#: A sitecustomize that says, at the first import of enum, what SIGTERM's handler is.
_AT_ENUM = """import sys, _signal

class _Look:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "enum":
            sys.meta_path.remove(_Look)
            handler = _signal.getsignal(_signal.SIGTERM)
            print("SIGTERM at enum:", getattr(handler, "__name__", handler), file=sys.stderr, flush=True)
        return None

sys.meta_path.insert(0, _Look)
"""


def test_the_reader_catches_sigterm_before_enum_and_functools_are_imported(tmp_path: Path) -> None:
    """keepalived may stop a reader still in its start-up, and one killed before cli catches SIGTERM
    journals nothing (docs/invariants.md, "Before the reader catches SIGTERM"): cli catches it with
    signal.py's C core, before anything imports `signal`, which brings enum and functools (~4.5 ms
    of the start: SIGTERM caught 11-12 ms after the interpreter's exec, not 16-19)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_AT_ENUM)
    res = subprocess.run([LAUNCHER, "--version"], capture_output=True, text=True, cwd="/",
                         env={**os.environ, "PYTHONPATH": str(hook)})
    assert res.returncode == 0 and "SIGTERM at enum: _early_term" in res.stderr, (res.stdout, res.stderr)


def test_the_checkout_wrapper_runs_as_the_launcher_and_a_program_importing_the_package_does_not(tmp_path: Path) -> None:
    """cli catches SIGTERM from its first moment only in the launcher (keepalived may stop the reader
    while it imports): started through bin/notify-launcher (which imports notify_launcher.__main__),
    not in a program that imports the package, where SIGTERM keeps its default."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import atexit, signal\n"
        "atexit.register(lambda: print('SIGTERM:', getattr(signal.getsignal(signal.SIGTERM), '__name__', 'default')))\n")
    top = os.path.dirname(os.path.dirname(os.path.realpath(LAUNCHER)))
    env = {**os.environ, "PYTHONPATH": str(hook)}
    launcher = subprocess.run([LAUNCHER, "--version"], capture_output=True, text=True, env=env, cwd="/")
    assert launcher.stdout.split("\n")[1:] == ["SIGTERM: _early_term", ""], (launcher.stdout, launcher.stderr)
    program = subprocess.run([sys.executable, "-c", "import notify_launcher.cli"], capture_output=True, text=True,
                             env={**env, "PYTHONPATH": f"{hook}:{top}"}, cwd="/")
    assert program.stdout == "SIGTERM: default\n", (program.stdout, program.stderr)


def _first_event_traced(launcher: Launcher, trace: Path, syscalls: str) -> tuple[int, list[str]]:
    """keepalived's script run under `strace -f` (`syscalls` traced), a line written as it starts, its
    action run: the reader's pid and its trace lines after its exec of the .venv's python (the
    wrapper's shell, the same pid, forked readlink before)."""
    k = Keepalived(["strace", "-f", "-qq", "-s", "4096", "-e", f"trace=execve,{syscalls}", "-e", "signal=none",
                    "-o", str(trace), *launcher.argv()], str(launcher.fifo))
    launcher.standins.append(k)
    k.start()
    assert k.write(VI.format("MASTER"))
    launcher.settle(1)
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if '/.venv/bin/python", ' in line and line.endswith("= 0"))
    reader = lines[start].split()[0]
    return int(reader), [line for line in lines[start:] if line.startswith(reader + " ")]


@needs("strace (Debian's strace: scripts/setup installs it)", shutil.which("strace") is not None)
def test_the_reader_forks_the_standby_before_it_imports_the_rest_of_itself(launcher: Launcher,
                                                                           tmp_path: Path) -> None:
    """A line keepalived wrote before it started the script waits for the reader's start-up and then the
    worker's: the worker is forked once the settings are checked, before the reader imports and builds
    its loop (reader.py, the journal's modules), so that both start-ups share the machine's CPUs
    (benchmarks: first event at start).  The line's action still runs."""
    _, mine = _first_event_traced(launcher, tmp_path / "trace", "clone,clone3,openat")
    fork = next(i for i, line in enumerate(mine) if re.search(r"\bclone3?\(", line))
    checked = max(i for i, line in enumerate(mine) if re.search(r"notify_launcher/(__pycache__/)?security\.", line))
    built = next(i for i, line in enumerate(mine) if re.search(r"notify_launcher/(__pycache__/)?reader\.", line))
    assert checked < fork < built, "\n".join(mine[checked:built + 1])


def _cpus(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list"))


def _processor(pid: int | str) -> int:
    """The CPU `pid` runs or last ran on (/proc's stat field 39)."""
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[36])


def _migrations() -> int:
    """How often the kernel moved this thread to another CPU (a busy machine adds some: never fewer)."""
    sched = Path("/proc/thread-self/sched").read_text()
    return int(next(line.split(":")[1] for line in sched.splitlines() if line.startswith("se.nr_migrations")))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not os.path.exists("/proc/self/sched"),
                    reason="one CPU allowed (nowhere to step aside to), or no /proc/PID/sched to count migrations")
def test_a_parent_steps_off_its_new_childs_cpu_with_its_own_cpu_set_given_back() -> None:
    """process.step_aside, with a real fork: the kernel queues a new child on its parent's CPU; the
    parent leaves that CPU (the two start-ups then run side by side) and keeps its CPU set.  (Needs
    /proc/PID/sched, CONFIG_SCHED_DEBUG: Debian's kernels have it.)"""
    from notify_launcher.process import step_aside

    before = os.sched_getaffinity(0)
    here = min(before)
    r, w = os.pipe()
    os.sched_setaffinity(0, {here})  # the child is queued here, as the kernel queues one on its parent's CPU
    child = os.fork()
    if child == 0:
        os.close(w)
        os.read(r, 1)  # (blocked until the parent is done)
        os._exit(0)
    os.close(r)
    try:
        assert _processor(child) == here
        for _ in range(100):  # (a busy machine's balancer may move us off `here` first: then nothing to show)
            os.sched_setaffinity(0, {here})
            os.sched_setaffinity(0, before)  # (moves nobody: we run on `here`)
            moved = _migrations()
            step_aside(child)
            if _migrations() > moved:
                break
        else:
            raise AssertionError("the parent stayed on its child's CPU")
        assert os.sched_getaffinity(0) == before
    finally:
        os.close(w)
        os.waitpid(child, 0)


@needs("strace (Debian's strace: scripts/setup installs it)", shutil.which("strace") is not None)
def test_nobody_keeps_a_narrowed_cpu_set_after_the_reader_stepped_aside(launcher: Launcher, tmp_path: Path) -> None:
    """The reader steps off its new worker's CPU only for a moment (unless the worker's parent ran, and
    left, elsewhere first): the reader, the worker and so every action keep the CPU set keepalived gave
    (here: the test's)."""
    reader, mine = _first_event_traced(launcher, tmp_path / "trace", "sched_setaffinity")
    calls = [line for line in mine if "sched_setaffinity(0," in line]
    assert len(calls) in (0, 2) and all(call.endswith("= 0") for call in calls), mine
    mask = _cpus(os.getpid())
    assert not calls or calls[-1].split("[", 1)[1].split("]")[0] == " ".join(map(str, sorted(os.sched_getaffinity(0))))
    assert _cpus(reader) == mask
    assert _cpus(launcher.wait_standby()) == mask
