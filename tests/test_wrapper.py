"""bin/notify-launcher, the checkout wrapper keepalived runs as root: one tree named once (readlink
-f), whatever the links and spellings on the way, and the .venv's Python with -S that still gets
what site.py would have given it.  Found by a red team against a wrapper that trusted ${0%/bin/*}
and resolved the checkout in Python (each test failed on it).  Real processes only; every run is
bounded (seconds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from support import LAUNCHER, ROOT

SITE = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
DEPS = ("daemon", "lockfile", "filelock", "psutil")
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}  # keepalived's, nothing else

#: A hook on PYTHONPATH (the way tests/support/faketime gets in): at exit, what this process ran.
PROBE = """\
import atexit, json, os, sys
def _probe():
    try:
        import release_marker
    except ImportError:
        pass
    mods = {name: getattr(sys.modules.get(name), "__file__", None)
            for name in ("notify_launcher", "release_marker", "filelock", "daemon", "psutil")}
    out = {"executable": sys.executable, "modules": mods}
    if os.environ.get("PROBE_WORKER_COMMAND"):
        from notify_launcher.systemd_unit import worker_command
        out["worker_command"] = worker_command("--version")
    print("PROBE " + json.dumps(out), flush=True)
atexit.register(_probe)
"""


def _probe(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("PROBE ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][6:])


def _release(base: Path, name: str, deps: tuple[str, ...] = DEPS) -> Path:
    """A checkout as a deploy makes one: bin/notify-launcher (this checkout's), the package (a link to
    this checkout's), and a .venv of its own (this interpreter, --without-pip) holding `deps` (links to
    this checkout's .venv) and a module release_marker naming the release."""
    top = base / name
    (top / "bin").mkdir(parents=True)
    shutil.copy(LAUNCHER, top / "bin")
    (top / "notify_launcher").symlink_to(ROOT / "notify_launcher")
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip",
                    str(top / ".venv")], check=True, timeout=60)
    site = top / ".venv" / SITE
    for dep in deps:
        (site / dep).symlink_to(Path(sys.prefix) / SITE / dep)
    (site / "release_marker.py").write_text(f"NAME = {name!r}\n")
    return top


def _switch(link: Path, target: str) -> None:
    """A deploy's atomic switch of `current`."""
    new = link.with_name(link.name + ".new")
    new.symlink_to(target)
    os.replace(new, link)


def test_a_worker_unit_started_after_a_deploy_switch_runs_one_release_not_two(tmp_path: Path) -> None:
    """docs/security.md / the wrapper's comment: "a deploy switched by a symlink never mixes two
    versions in one worker".  Under keepalived.service every worker is a transient unit whose
    command line is systemd_unit.worker_command(): [sys.executable, -c, RUN_FROM, <package dir>, ...].
    A wrapper that exec'd "$top/.venv/bin/python" with $top unresolved gave the reader a
    sys.executable naming the `current` link while the package dir was the realpath (releases/v1): a
    worker unit started after `current` moved to v2 ran v2's .venv with v1's package, two releases in
    one process.  The wrapper execs the readlink -f'd path: v1's .venv.
    Who runs the wrapper through `current`: `serve` (service mode, its own .service, so every worker
    is a unit) with ExecStart=/srv/nl/current/bin/notify-launcher -- long-lived, so every worker after
    a deploy; keepalived >= 2.3.0 with `use_symlink_paths`; `send` from a service.  (keepalived 2.2.7
    and 2.3 by default exec the realpath of the script: the reader sees the release directly.)"""
    releases = tmp_path / "releases"
    _release(releases, "v1")
    _release(releases, "v2")
    current = tmp_path / "current"
    current.symlink_to("releases/v1")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PROBE)
    env = {**ENV, "PYTHONPATH": str(hook)}
    reader = subprocess.run([str(current / "bin" / "notify-launcher"), "--version"], capture_output=True, text=True,
                            cwd="/", stdin=subprocess.DEVNULL, env={**env, "PROBE_WORKER_COMMAND": "1"}, timeout=60)
    assert reader.returncode == 0, reader.stderr
    command = _probe(reader.stdout)["worker_command"]
    assert _probe(reader.stdout)["modules"]["release_marker"].startswith(str(releases / "v1")), reader.stdout
    _switch(current, "releases/v2")  # the deploy of v2, while v1's reader runs
    worker = subprocess.run(command, capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL, env=env,
                            timeout=60)
    assert worker.returncode == 0, worker.stderr
    ran = _probe(worker.stdout)
    assert ran["modules"]["notify_launcher"].startswith(str(releases / "v1")), ran  # the package: v1's
    assert os.path.realpath(ran["modules"]["release_marker"]).startswith(str(releases / "v1")), (command[0], ran)


def _run_one_event(wrapper: Path, work: Path, env_note: str = "") -> tuple[str, str]:
    """keepalived (the stand-in) runs `wrapper` as its notify_fifo_script, writes one MASTER line and
    stops; returns (the handler's records, the log).  Bounded: 20 s at most."""
    import time

    from support.standin import Keepalived

    work.mkdir(mode=0o700)
    handler = work / "handler.sh"
    handler.write_text(f'#!/bin/sh\necho "$@" >> {work}/records\n')
    handler.chmod(0o755)
    log = work / "log"
    k = Keepalived([str(wrapper), "--handler", str(handler), "--state-dir", str(work / "state"),
                    "--log-file", str(log), "--linger", "0.2"], str(work / "notify.fifo"))
    k.start()
    try:
        k.write('INSTANCE "VI_1" MASTER 100')
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if (work / "records").exists() or text.count("worker failed") >= 2:
                break
            if k.proc is not None and k.proc.poll() is not None:  # the reader is gone
                time.sleep(0.5)
                break
            time.sleep(0.02)
    finally:
        if k.proc is not None and k.proc.poll() is None:
            k.stop([])
        else:
            os.close(k.fd)
    time.sleep(0.5)  # the worker's linger
    records = (work / "records").read_text() if (work / "records").exists() else ""
    return records, log.read_text() if log.exists() else ""


def _base_python_with_deps(base: Path) -> Path:
    """A Python installation whose own site-packages holds the launcher's dependencies (as Debian's
    python3 with python3-daemon, python3-filelock, python3-psutil): this interpreter's stdlib, linked."""
    real = Path(sys.base_prefix)
    lib = base / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (base / "bin").mkdir(parents=True)
    (lib / "site-packages").mkdir(parents=True)
    for entry in (real / lib.relative_to(base)).iterdir():
        if entry.name != "site-packages":
            (lib / entry.name).symlink_to(entry)
    for dep in DEPS:
        (lib / "site-packages" / dep).symlink_to(Path(sys.prefix) / SITE / dep)
    exe = base / "bin" / os.path.basename(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    shutil.copy(os.path.realpath(getattr(sys, "_base_executable", sys.executable)), exe)
    return exe


def test_a_checkout_whose_venv_uses_the_systems_packages_still_runs_actions(tmp_path: Path) -> None:
    """The README: `/path/to/checkout/bin/notify-launcher` "uses the checkout's .venv".  A .venv made
    with --system-site-packages (on Debian: python3-daemon, python3-filelock, python3-psutil from apt,
    `pip install --no-deps -e .`) must keep them under the wrapper's -S: adding only the .venv's own
    site-packages, the reader started and journaled (check-config said OK), but every worker died on
    `ModuleNotFoundError: No module named 'daemon'` and no action ever ran."""
    exe = _base_python_with_deps(tmp_path / "base")
    top = tmp_path / "nl"
    (top / "bin").mkdir(parents=True)
    shutil.copy(LAUNCHER, top / "bin")
    (top / "notify_launcher").symlink_to(ROOT / "notify_launcher")
    subprocess.run([str(exe), "-m", "venv", "--system-site-packages", "--without-pip", str(top / ".venv")],
                   check=True, timeout=60)
    records, log = _run_one_event(top / "bin" / "notify-launcher", tmp_path / "run")
    assert records == "INSTANCE VI_1 MASTER 100\n", log


def test_a_wrapper_path_spelled_with_dotdot_after_a_link_gives_workers_an_interpreter_that_exists(tmp_path: Path) -> None:
    """"The wrapper works through any symlink on the way ... however its path is spelled".  Reached as
    LINKS/bindir/../bin/notify-launcher (bindir -> the checkout's bin/: the kernel resolves `..`
    after the link, physically), the wrapper passes $top = LINKS/bindir/.. unresolved and execs
    LINKS/bindir/../.venv/bin/python; Python normalizes that lexically, so sys.executable is
    LINKS/.venv/bin/python, a file that does not exist.  Under keepalived.service every worker is
    systemd-run of worker_command(), [sys.executable, ...]: no worker unit could start.  And
    Python's getpath, given a non-existent executable, searches the *lexical* path's parents for
    its stdlib (LINKS/.venv/lib/python3.X/os.py, LINKS/lib/..., up to /tmp/lib/python3.X/os.py:
    strace shows the stats): a directory root never chose -- unless the wrapper execs readlink -f's path."""
    links = tmp_path / "links"
    links.mkdir()
    (links / "bindir").symlink_to(ROOT / "bin")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PROBE)
    res = subprocess.run([f"{links}/bindir/../bin/notify-launcher", "--version"], capture_output=True, text=True,
                         cwd="/", stdin=subprocess.DEVNULL, timeout=60,
                         env={**ENV, "PYTHONPATH": str(hook), "PROBE_WORKER_COMMAND": "1"})
    assert res.returncode == 0, res.stderr
    ran = _probe(res.stdout)
    assert os.path.exists(ran["worker_command"][0]), ran["worker_command"][0]
    assert os.path.realpath(ran["executable"]).startswith(os.path.realpath(ROOT / ".venv")) or \
        os.path.realpath(ran["executable"]) == os.path.realpath(sys.executable), ran["executable"]


def test_a_wrapper_path_spelled_with_dotdot_after_a_link_never_takes_the_stdlib_from_a_directory_on_its_spelling(
        tmp_path: Path) -> None:
    """The same spelling, as root: keepalived's own script check and docs/security.md judge the
    *real* path (root's checkout), and a root-owned directory of links in a sticky /tmp is "fine on
    the way".  But the .venv's Python, exec'd by the lexical path LINKS/bindir/../.venv/bin/python,
    finds no such file and looks for its stdlib landmark (lib/python3.X/os.py) in every parent of
    the lexical path: here `tmp_path` stands for /tmp, where any user may create lib/python3.X/.  A
    planted os.py makes that directory Python's prefix, and its encodings package runs as root
    before any line of the launcher (uid 0 printed) -- unless the wrapper execs readlink -f's path."""
    links = tmp_path / "links"
    links.mkdir()
    (links / "bindir").symlink_to(ROOT / "bin")
    stdlib = tmp_path / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"  # another user's
    (stdlib / "encodings").mkdir(parents=True)
    (stdlib / "os.py").write_text("")
    (stdlib / "encodings" / "__init__.py").write_text(
        "import posix, sys\nsys.stderr.write('PLANTED STDLIB RAN as uid %d\\n' % posix.getuid())\n")
    res = subprocess.run([f"{links}/bindir/../bin/notify-launcher", "--version"], capture_output=True, text=True,
                         cwd="/", stdin=subprocess.DEVNULL, timeout=60, env=ENV)
    assert "PLANTED" not in res.stdout + res.stderr and res.returncode == 0, (res.returncode, res.stderr)


def test_a_bin_directory_reached_through_a_link_runs_the_checkout_the_link_leads_to(tmp_path: Path) -> None:
    """"The wrapper works through any symlink on the way (the file, a bin/ directory ...)": it runs the
    checkout `readlink -f` finds.  One that trusted ${0%/bin/*} whenever that directory held a
    notify_launcher/ directory, without asking whether bin/ is a link, with
    /srv/nl/bin -> releases/v2/bin (keepalived.conf keeps saying /srv/nl/bin/notify-launcher) and an
    older tree left at /srv/nl (its notify_launcher/ and .venv from before the move to releases), the
    wrapper ran the old tree's package and .venv, not the release the link names."""
    releases = tmp_path / "nl" / "releases"
    _release(releases, "v2")
    old = tmp_path / "nl"  # the tree from before: its own package and .venv
    (old / "notify_launcher").symlink_to(ROOT / "notify_launcher")
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip",
                    str(old / ".venv")], check=True, timeout=60)
    (old / ".venv" / SITE / "release_marker.py").write_text("NAME = 'old'\n")
    (old / "bin").symlink_to("releases/v2/bin")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PROBE)
    res = subprocess.run([str(old / "bin" / "notify-launcher"), "--version"], capture_output=True, text=True,
                         cwd="/", stdin=subprocess.DEVNULL, timeout=60, env={**ENV, "PYTHONPATH": str(hook)})
    assert res.returncode == 0, res.stderr
    ran = _probe(res.stdout)
    assert ran["modules"]["notify_launcher"].startswith(str(releases / "v2")), ran
    assert ran["modules"]["release_marker"].startswith(str(releases / "v2")), ran


def _as_nobody(script: str) -> None:
    subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sh", "-c", script],
                   check=True, timeout=30, cwd="/")


def _keepalived_accepts(path: str) -> None:
    """keepalived's enable_script_security rule (docs/keepalived.md "Script security"): every component
    of the path as given (lstat) and of its realpath owned by root, none writable by others unless a
    sticky directory."""
    import stat

    from support.realka import insecure_path

    assert insecure_path(path) is None, insecure_path(path)
    parts = Path(path).parts
    for i in range(1, len(parts) + 1):
        st = os.lstat(os.path.join(*parts[:i]))
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        writable = not stat.S_ISLNK(st.st_mode) and not sticky_dir and st.st_mode & 0o022  # a link's mode means nothing
        assert st.st_uid == 0 and not writable, os.path.join(*parts[:i])


def test_a_bin_link_in_a_sticky_directory_never_lets_another_user_choose_what_root_runs(tmp_path: Path) -> None:
    """docs/security.md: root runs nothing a non-root user can change; "Sticky directories such as
    /tmp are fine on the way to what root owns", and a symlink on the way must be root's.  Whoever runs
    /tmp/X/bin/notify-launcher by that path -- /tmp/X sticky (1777), /tmp/X/bin root's link to the
    checkout's bin/ -- runs it: keepalived >= 2.3.0 with `use_symlink_paths` (it then execs the path
    as given, lib/notify.c, after check_security of that path and of its realpath: both pass, sticky
    /tmp/X is allowed), a unit's ExecStart= for `serve`, root's shell or PATH for an operator command.
    (keepalived 2.2.7, and 2.3 by default, exec the realpath.)  A wrapper taking ${0%/bin/*} = /tmp/X
    as the checkout once /tmp/X/notify_launcher is a directory -- any user may create that name there
    (the sticky bit protects only others' names) -- let user nobody create /tmp/X/notify_launcher/ and
    /tmp/X/.venv/bin/python: root exec'd nobody's "python" (check-config --keepalived-conf says OK for
    such a line).  `readlink -f` first: the root-owned checkout, always."""
    import tempfile

    checkout = _release(tmp_path / "releases", "v1")
    sticky = Path(tempfile.mkdtemp(prefix="rt-wrapper-sticky-", dir="/tmp"))
    try:
        sticky.chmod(0o1777)
        (sticky / "bin").symlink_to(checkout / "bin")  # root's link, in a sticky directory
        wrapper = str(sticky / "bin" / "notify-launcher")
        _keepalived_accepts(wrapper)
        proof = sticky / "proof"
        _as_nobody(f"mkdir {sticky}/notify_launcher {sticky}/.venv {sticky}/.venv/bin"
                   f" && : > {sticky}/notify_launcher/__init__.py"
                   f" && echo 'import os; open(\"{proof}\", \"a\").write(\"main.py as uid %d\\n\" % os.getuid())'"
                   f"    > {sticky}/notify_launcher/__main__.py"
                   f" && printf '#!/bin/sh\\necho \"python as uid $(id -u)\" >> {proof}\\n' > {sticky}/.venv/bin/python"
                   f" && chmod 755 {sticky}/.venv/bin/python && : > {proof} && chmod 666 {proof}")
        records, log = _run_one_event(Path(wrapper), tmp_path / "run")
        ran = proof.read_text()
        assert ran == "" and records == "INSTANCE VI_1 MASTER 100\n", (ran, log)
    finally:
        shutil.rmtree(sticky)


def test_a_sitecustomize_that_fails_never_keeps_the_reader_from_starting(tmp_path: Path, monkeypatch) -> None:
    """The wrapper "still imports a sitecustomize if there is one (an administrator's hook ...)", but not
    as site.py does: site.py reports a failing sitecustomize ("Error in sitecustomize; set PYTHONVERBOSE
    for traceback") and goes on, and so does the wrapper (site.execsitecustomize); one that re-raised
    every error but a missing sitecustomize's killed the reader before its first line, with stderr on
    /dev/null under keepalived: no log line, no syslog, every event lost, on every start and reload.  An administrator's hook is exactly such a file: on
    Debian /usr/lib/python3.X/sitecustomize.py is /etc/python3.X/sitecustomize.py (a conffile on the
    .venv's path, since the .venv's Python is Debian's), e.g. `import coverage; coverage.process_startup()`
    with coverage installed system-wide but not in the launcher's .venv.  Here the hook comes in
    through keepalived's environment (PYTHONPATH), as tests/support/faketime does."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import coverage_not_in_this_venv\ncoverage_not_in_this_venv.process_startup()\n")
    monkeypatch.setenv("PYTHONPATH", str(hook))  # keepalived's environment, which its scripts inherit
    records, log = _run_one_event(Path(LAUNCHER), tmp_path / "run")
    assert records == "INSTANCE VI_1 MASTER 100\n", log or "(no log at all)"


def test_a_deploy_switched_while_the_wrapper_starts_never_mixes_two_releases_in_the_reader(tmp_path: Path) -> None:
    """The same class at start: a shell that exec'd current/.venv/bin/python (the release `current`
    named then) and a Python resolving `current` only later, in os.path.realpath(top): a switch in
    between (held open here: strace delays the readlink of `current`, and the test switches while it
    waits) gave one process v1's interpreter (its .venv's Python: another base
    installation here, as after a Python upgrade between releases) with v2's package and v2's
    .venv site-packages; with v2 built for another Python version its site-packages path
    (lib/pythonX.Y of *v1's* version) would not even exist.  The wrapper resolves once, in the shell,
    and gives Python the resolved path: one release, whenever the switch comes."""
    import time

    if shutil.which("strace") is None or not os.path.exists("/usr/bin/python3.11"):
        import pytest
        pytest.skip("needs strace and a second Python 3.11 (Debian's /usr/bin/python3.11)")
    releases = tmp_path / "releases"
    _release(releases, "v1")  # this interpreter's base
    v2 = releases / "v2"  # Debian's python3.11 as its base
    (v2 / "bin").mkdir(parents=True)
    shutil.copy(LAUNCHER, v2 / "bin")
    (v2 / "notify_launcher").symlink_to(ROOT / "notify_launcher")
    subprocess.run(["/usr/bin/python3.11", "-m", "venv", "--without-pip", str(v2 / ".venv")], check=True, timeout=60)
    (v2 / ".venv" / SITE / "release_marker.py").write_text("NAME = 'v2'\n")
    current = tmp_path / "current"
    current.symlink_to("releases/v1")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PROBE.replace('out = {"executable"', 'out = {"base": sys.base_prefix, "executable"'))
    # readlink calls of the process (env, sh, then Python, one pid): the .venv's python, python3.11, the
    # base python twice (getpath), then realpath(top)'s readlink of `current`: the 5th.
    proc = subprocess.Popen(["strace", "-qq", "-f", "-o", "/dev/null", "-e", "trace=readlink",
                             "-e", "inject=readlink:delay_enter=3000000:when=5",
                             "env", "-i", f"PATH={ENV['PATH']}", f"PYTHONPATH={hook}",
                             str(current / "bin" / "notify-launcher"), "--version"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        deadline = time.monotonic() + 10
        held = 0
        while held < 3 and time.monotonic() < deadline:  # the tracee sits in readlink (89) for 3 s
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            kids = children.read_text().split() if children.exists() else []
            try:
                held = held + 1 if kids and Path(f"/proc/{kids[0]}/syscall").read_text().split()[0] == "89" else 0
            except OSError:
                held = 0
            time.sleep(0.05)
        assert held >= 3, "the tracee never sat in the delayed readlink"
        _switch(current, "releases/v2")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    ran = _probe(out)
    release = "v1" if ran["modules"]["release_marker"].startswith(str(releases / "v1")) else "v2"
    interpreter = "v1" if ran["base"] == sys.base_prefix else "v2"
    package = "v1" if ran["modules"]["notify_launcher"].startswith(str(releases / "v1")) else "v2"
    assert interpreter == package == release, (f"interpreter {interpreter}, package {package}, "
                                               f".venv site-packages {release}", ran)
