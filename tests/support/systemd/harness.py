"""notify-launcher under a REAL systemd: Debian bookworm booted in a systemd-nspawn container.

    PYTHONPATH=tests .venv/bin/python -m support.systemd.harness stop-auto stop-daemon serve-restart
    PYTHONPATH=tests .venv/bin/python -m support.systemd.harness --source /tmp/old-checkout --keep stop-daemon

(as root, from the checkout; prints results).

PID 1 of these machines is not systemd, so the harness boots one: a Debian bookworm root file system
(debootstrap: systemd, dbus, keepalived, python3, ...) cached under /var/cache/notify-launcher-test
(keyed by a hash of the package list; the first run builds it in one to two minutes -- debootstrap
took 50-130 s here -- later runs reuse it), and per scenario:

1. a run directory under /var/tmp holding a copy of the project (only what `pip install` needs) and
   the wheels of its dependencies (downloaded on the host once, cached by requirement list);
2. cgroups we create, /sys/fs/cgroup/<hierarchy>/notify-launcher-test-..., one per hierarchy
   systemd uses (name=systemd and/or cgroup2): nspawn runs inside them (the host has no systemd to
   ask for a scope: --register=no --keep-unit), so we know every process it starts;
3. boot.sh, under `unshare --mount`: an overlay (lower = the cached root, never modified; upper =
   the run directory) so each scenario starts from a clean system; `pip install` of the project into
   /opt/notify-launcher/venv inside it (chroot, offline); the scenario files (beside this one) and
   the handler (support.recorder's, written into the run directory); then systemd-nspawn
   --boot --private-network.  nl-scenario.service runs scenario.sh, which writes its results into
   /results (the run directory's results/) and powers the container off;
4. cleanup whatever happened: nspawn gets SIGTERM (an orderly poweroff) if the run overstays, then
   every process left in our cgroups is SIGKILLed by PID; the cgroups, nspawn's run-time directories
   it made on the host, and the run directory are removed.  The cache stays.

Environment:
  NL_SYSTEMD_CGROUP=hybrid  give the container the host's cgroup layout (v1 + name=systemd + v2);
                            default unified: cgroup v2 only, Debian 12's default, even on this host
  NL_SYSTEMD_KEEP=1         keep the run directory for a post-mortem (or --keep)
  NL_SYSTEMD_SOURCE=DIR     install another checkout than this one (or --source), e.g. an older
                            commit from `git archive COMMIT | tar -x -C DIR`
  NL_DEBIAN_MIRROR=URL      the Debian mirror (default: the one apt's sources use)
  NL_SYSTEMD_CACHE=DIR      the cache directory (default /var/cache/notify-launcher-test)

Scenarios (scenario.sh, beside this file):
  stop-auto      keepalived runs the launcher as notify_fifo_script with default settings;
                 `systemctl stop keepalived` while the MASTER action (10 s) runs
  stop-daemon    the same with `detach = daemon` (the double fork; a launcher without the `detach`
                 setting gets no such key: the double fork is all it has)
  serve-restart  `notify-launcher serve` as its own unit; `systemctl restart keepalived` mid-action

Host packages: debootstrap, systemd-container (systemd-nspawn); util-linux (unshare), coreutils
(chroot) are always there.  Traffic: debootstrap and pip reach the mirror/PyPI from the host once;
VRRP runs only on a veth pair inside the container's private network namespace.
"""

from __future__ import annotations

import argparse
import configparser
import fcntl
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from support import ROOT, recorder
from support.recorder import Action

HERE = Path(__file__).resolve().parent  # boot.sh, scenario.sh, the unit files and keepalived.conf files
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "keepalived", "iproute2", "procps", "python3", "python3-venv")
BUILD_TOOLS = ("setuptools>=70.1", "wheel")  # bookworm's venv has setuptools 66: too old for pyproject builds
BASE_FORMAT = 1  # bump when the way the base root is prepared changes
CONTAINER_PYTHON = "3.11"  # bookworm's
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_PACKAGES = ("debootstrap", "systemd-container")
SCENARIOS = ("stop-auto", "stop-daemon", "serve-restart")
RUN_TIMEOUT = 240.0  # seconds a scenario container may live (boot + scenario + poweroff)

Log = Callable[[str], None]


class Unavailable(Exception):
    """A prerequisite is missing: the tests skip (or fail under CI=true) with this reason."""


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# prerequisites


def cache_dir() -> Path:
    return Path(os.environ.get("NL_SYSTEMD_CACHE", "/var/cache/notify-launcher-test"))


def cgroup_mode() -> str:
    mode = os.environ.get("NL_SYSTEMD_CGROUP", "unified")
    if mode not in ("unified", "hybrid"):
        raise Unavailable(f"NL_SYSTEMD_CGROUP={mode!r}: expected unified or hybrid")
    return mode


def find_mirror() -> str:
    """The Debian archive apt already uses here (deb822 .sources or one-line .list), else deb.debian.org."""
    if os.environ.get("NL_DEBIAN_MIRROR"):
        return os.environ["NL_DEBIAN_MIRROR"].rstrip("/")
    candidates: list[str] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in Path(path).read_text(errors="replace").split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if fields.get("Enabled", "yes").lower() == "no" or "deb" not in fields.get("Types", "").split():
                continue
            if any(not s.endswith("-security") for s in fields.get("Suites", "").split()):
                candidates += [u for u in fields.get("URIs", "").split() if "security" not in u]
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for m in re.finditer(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if "security" not in m.group(1) and not m.group(2).endswith("-security"):
                candidates.append(m.group(1))
    debian = [u for u in candidates if "debian" in u and u.startswith(("http://", "https://"))]
    return (debian or [DEFAULT_MIRROR])[0].rstrip("/")


def mirror_reachable(mirror: str) -> str | None:
    url = f"{mirror}/dists/{SUITE}/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            return None
    except Exception as exc:  # noqa: BLE001 -- any failure means: cannot build the root here
        return f"the Debian mirror {url} cannot be reached ({exc})"


def cgroup_hierarchies() -> list[Path]:
    """Where systemd (in the container) tracks processes: the cgroup2 mount and the v1 name=systemd
    hierarchy, whichever the host has.  nspawn must start inside a cgroup of each."""
    found: list[Path] = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fstype, _source, options = (right.split() + ["", "", ""])[:3]
            mountpoint = Path(left.split()[4])
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
                found.append(mountpoint)
    return found


def missing_prerequisites() -> str | None:
    """Why the harness cannot run here, or None.  Does not touch the network."""
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (debootstrap, mounts, cgroups, systemd-nspawn)"
    missing = [b for b in ("debootstrap", "systemd-nspawn", "unshare", "chroot", "mount")
               if not shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")]
    if missing:
        return (f"missing {', '.join(missing)} (apt-get install {' '.join(HOST_PACKAGES)})")
    hierarchies = cgroup_hierarchies()
    if not hierarchies:
        return "no cgroup2 or name=systemd cgroup hierarchy is mounted"
    if not any(p.is_dir() and os.access(p, os.W_OK) for p in hierarchies):
        return f"cannot create cgroups under {', '.join(map(str, hierarchies))}"
    try:
        fs = Path("/proc/filesystems").read_text()
    except OSError:
        fs = ""
    if "overlay" not in fs and not Path("/sys/module/overlay").exists():
        subprocess.run(["modprobe", "overlay"], capture_output=True)
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlay file system"
    try:
        cgroup_mode()
    except Unavailable as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------
# what the launcher under test supports (read from its --help, run on the host)


def default_source() -> Path:
    """The checkout installed into the container: NL_SYSTEMD_SOURCE, else this one."""
    return Path(os.environ.get("NL_SYSTEMD_SOURCE") or ROOT).resolve()


def launcher_help(source: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run([sys.executable, "-m", "notify_launcher", *args, "--help"], env=env, cwd=source,
                          capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def supports_detach(source: Path) -> bool:
    return "--detach" in launcher_help(source)


def supports_serve(source: Path) -> bool:
    text = launcher_help(source, "serve")
    return "usage: notify-launcher serve" in text and "--fifo" in text


# ---------------------------------------------------------------------------------------------
# the cached root file system and wheels


def requirements(source: Path) -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(source / "setup.cfg")
    text = cfg.get("options", "install_requires", fallback="")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _cache_lock() -> Iterator[None]:
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], what: str, log_file: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a build step; its output goes to `log_file` (or is captured) and is quoted on failure."""
    if log_file is not None:
        with open(log_file, "ab") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        tail = log_file.read_text(errors="replace")[-3000:]
    else:
        res = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, env=env)
        done, tail = res, (res.stdout + res.stderr).decode(errors="replace")[-3000:]
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{tail}")


def _pip_python() -> str:
    """A host Python with pip, to download wheels (the container is offline)."""
    for python in (sys.executable, str(ROOT / ".venv" / "bin" / "python"), "python3"):
        if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return python
    raise Unavailable("no Python with pip on the host to download wheels (run scripts/setup)")


def _download_wheels(reqs: list[str], dest: Path) -> None:
    machine = platform.machine()
    argv = [_pip_python(), "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
            "--only-binary=:all:", "--python-version", CONTAINER_PYTHON, "--implementation", "cp",
            "--abi", "cp" + CONTAINER_PYTHON.replace(".", ""), "--abi", "abi3", "--abi", "none",
            "--platform", f"manylinux2014_{machine}", "--platform", f"manylinux_2_28_{machine}",
            "--platform", f"linux_{machine}", "-d", str(dest), *reqs]
    try:
        _run(argv, "downloading wheels")
    except RuntimeError as exc:
        raise Unavailable(f"cannot download the wheels for {' '.join(reqs)} on the host: {exc}") from exc


def _chroot(root: Path, *argv: str, log_file: Path | None = None) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    _run(["chroot", str(root), *argv], f"chroot {argv[0]}", log_file, env=env)


def _remove_tree(path: Path) -> None:
    """rm -rf, after unmounting anything mounted below `path` (debootstrap mounts /proc, /sys in the
    target while it works; an interrupted run may leave them)."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as fh:
        mounts = [line.split()[4] for line in fh if line.split()[4].startswith(prefix)]
    for mountpoint in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mountpoint], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def base_key() -> str:
    return _key(SUITE, PACKAGES, BUILD_TOOLS, BASE_FORMAT, platform.machine())


def ensure_base(log: Log = _quiet) -> Path:
    """The cached root file system (built on first use): Debian bookworm minbase + PACKAGES, and a
    venv /opt/notify-launcher/venv with current build tools (the project is installed per run)."""
    name = f"rootfs-{SUITE}-{base_key()}"
    final = cache_dir() / name
    if (final / "ready").exists():
        return final / "root"
    with _cache_lock():
        if (final / "ready").exists():
            return final / "root"
        mirror = find_mirror()
        problem = mirror_reachable(mirror)
        if problem:
            raise Unavailable(problem)
        for stale in cache_dir().glob("rootfs-*"):  # other package lists, broken builds: 400 MB each
            if stale.name != name:
                log(f"removing stale cache {stale}")
                _remove_tree(stale)
        build = cache_dir() / f"{name}.build"
        _remove_tree(build)
        build.mkdir(parents=True)
        root = build / "root"
        t0 = time.monotonic()
        try:
            log(f"debootstrap {SUITE} from {mirror} into {root} (about a minute)")
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror],
                 "debootstrap", build / "debootstrap.log")
            log(f"debootstrap done in {time.monotonic() - t0:.0f} s; preparing the venv")
            tools = root / "opt" / "notify-launcher" / "build-tools"
            tools.mkdir(parents=True)
            _download_wheels(list(BUILD_TOOLS), tools)
            _chroot(root, "/usr/bin/python3", "-m", "venv", "/opt/notify-launcher/venv", log_file=build / "venv.log")
            _chroot(root, "/opt/notify-launcher/venv/bin/pip", "install", "--disable-pip-version-check", "--no-index",
                    "--find-links", "/opt/notify-launcher/build-tools", "--upgrade", *BUILD_TOOLS,
                    log_file=build / "venv.log")
            (root / "etc" / "hostname").write_text("nl-test\n")
            (build / "ready").write_text(json.dumps({"suite": SUITE, "packages": PACKAGES, "mirror": mirror,
                                                     "built": time.time()}) + "\n")
        except BaseException:
            _remove_tree(build)
            raise
        build.rename(final)
        log(f"cached root file system ready in {time.monotonic() - t0:.0f} s: {final}")
    return final / "root"


def ensure_wheels(source: Path, log: Log = _quiet) -> Path:
    """Wheels of the project's dependencies for the container's Python, cached by requirement list."""
    reqs = requirements(source)
    final = cache_dir() / f"wheels-{_key(reqs, CONTAINER_PYTHON, platform.machine())}"
    if (final / "ready").exists():
        return final
    with _cache_lock():
        if not (final / "ready").exists():
            log(f"downloading wheels: {' '.join(reqs)}")
            for stale in cache_dir().glob("wheels-*"):
                shutil.rmtree(stale, ignore_errors=True)
            final.mkdir(parents=True)
            if reqs:
                _download_wheels(reqs, final)
            (final / "ready").write_text(json.dumps(reqs) + "\n")
    return final


def copy_project(source: Path, dest: Path) -> None:
    """What `pip install` needs: the package, the top-level files (setup.cfg, pyproject.toml, README)."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for entry in source.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            shutil.copy2(entry, dest / entry.name)
        elif entry.name in ("notify_launcher", "bin"):
            shutil.copytree(entry, dest / entry.name, ignore=ignore)


def write_handler(path: Path) -> None:
    """The action of the scenarios (boot.sh installs it as /opt/nl-test/handler.sh): the recorder,
    recording into /results/records (the host's view of the run) with the cgroup each action runs in
    and the SIGTERM it may get; it sleeps as /etc/nl-test/sleeps (written by scenario.sh) says."""
    recorder.install(path, records=Path("/results/records"), sleeps=Path("/etc/nl-test/sleeps"), cgroup=True,
                     trap_term=True, then='echo "handler: $* done"')


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class Result:
    scenario: str
    dir: Path
    exit_code: int | None
    seconds: float  # from Popen to the container's exit
    files: dict[str, str] = field(default_factory=dict)

    def text(self, name: str) -> str:
        return self.files.get(name, "")

    @property
    def done(self) -> bool:
        return self.text("done").strip() == "ok"

    @property
    def timeline(self) -> dict[str, float]:
        marks: dict[str, float] = {}
        for line in self.text("timeline").splitlines():
            name, _, value = line.partition(" ")
            marks.setdefault(name, float(value))
        return marks

    @property
    def facts(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.text("facts").splitlines() if "=" in line)

    @property
    def actions(self) -> list[Action]:
        """The handler's actions, from its own record (support.recorder, options cgroup and trap_term)."""
        return recorder.actions(recorder.parse(self.text("records")))

    def worker_lines(self) -> list[str]:
        return [line for line in self.text("launcher.log").splitlines() if "worker started" in line]

    def diagnostics(self) -> str:
        parts = [f"scenario {self.scenario}: exit {self.exit_code} after {self.seconds:.1f} s, "
                 f"results {'complete' if self.done else 'INCOMPLETE'} (run dir {self.dir})"]
        for name, lines in (("scenario.log", 60), ("records", 40), ("facts", 40), ("launcher.log", 60),
                            ("ps-before-stop.txt", 40), ("ps-after-stop.txt", 40), ("units.txt", 60),
                            ("console.log", 30)):
            text = self.text(name)
            if text:
                parts.append(f"--- {name} (last {lines} lines)\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def report(self) -> str:
        """Timeline relative to the first of stop_begin / restart_begin (else keepalived_start)."""
        marks = self.timeline
        zero_name = next((k for k in ("stop_begin", "restart_begin", "keepalived_start") if k in marks), "")
        zero = marks.get(zero_name, 0.0)
        events: list[tuple[float, str]] = [(t, f"mark {k}") for k, t in marks.items()]
        for a in self.actions:
            events.append((a.start, f"action {a} started (cgroup {a.cgroup})"))
            if a.signal is not None:
                events.append((a.signal, f"action {a} got SIGTERM"))
            if a.end is not None:
                events.append((a.end, f"action {a} ended after {a.end - a.start:.2f} s"))
        lines = [f"{self.scenario}: container ran {self.seconds:.1f} s; t=0 at {zero_name or '?'}"]
        lines += [f"  {t - zero:+8.3f} s  {what}" for t, what in sorted(events)]
        lines += [f"  {line.split(' | ', 1)[-1]}" for line in self.worker_lines()]
        return "\n".join(lines)


def read_results(scenario: str, run_dir: Path, exit_code: int | None, seconds: float) -> Result:
    res = Result(scenario, run_dir, exit_code, seconds)
    for path in sorted((run_dir / "results").rglob("*")):
        if path.is_file():
            res.files[str(path.relative_to(run_dir / "results"))] = path.read_text(errors="replace")
    console = run_dir / "console.log"
    if console.exists():
        res.files["console.log"] = console.read_text(errors="replace").replace("\r\n", "\n").replace("\r", "")
    return res


# ---------------------------------------------------------------------------------------------
# one boot


class Cgroups:
    """Our cgroup in each hierarchy systemd uses; everything nspawn starts stays below them."""

    def __init__(self, name: str) -> None:
        self.paths: list[Path] = []
        try:
            for hierarchy in cgroup_hierarchies():
                (hierarchy / name).mkdir()
                self.paths.append(hierarchy / name)
        except OSError:
            self.destroy()
            raise

    def join(self) -> None:
        """In the child before exec (preexec_fn): move ourselves in."""
        for p in self.paths:
            (p / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def pids(self) -> set[int]:
        found: set[int] = set()
        for p in self.paths:
            for procs in p.rglob("cgroup.procs"):
                try:
                    found |= {int(x) for x in procs.read_text().split()}
                except OSError:
                    pass
        return found

    def destroy(self, grace: float = 10.0) -> list[int]:
        """SIGKILL every process left (by PID), then remove the cgroups bottom-up.  Returns the pids killed."""
        killed: list[int] = []
        deadline = time.monotonic() + grace
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for p in self.paths:
            for sub in sorted((d for d in p.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
                sub.rmdir()
            if p.exists():
                p.rmdir()
        return killed


def run_scenario(scenario: str, source: Path | None = None, keep: bool | None = None, log: Log = _quiet,
                 timeout: float = RUN_TIMEOUT) -> Result:
    """Boot a container that runs `scenario` and powers off; return what it recorded."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    keep = os.environ.get("NL_SYSTEMD_KEEP") == "1" if keep is None else keep
    source = default_source() if source is None else source
    problem = missing_prerequisites()
    if problem:
        raise Unavailable(problem)
    base = ensure_base(log)
    wheels = ensure_wheels(source, log)
    detach = "daemon" if scenario == "stop-daemon" and supports_detach(source) else ""
    run_dir = Path(tempfile.mkdtemp(prefix=f"nl-systemd-{scenario}-", dir="/var/tmp"))
    try:
        copy_project(source, run_dir / "src")
        write_handler(run_dir / "handler.sh")
        shutil.copytree(wheels, run_dir / "wheels", ignore=shutil.ignore_patterns("ready"))
        t0 = time.monotonic()
        exit_code = _boot(base, run_dir, f"nl-{scenario}-{os.getpid()}", scenario, detach, log, timeout)
        return read_results(scenario, run_dir, exit_code, time.monotonic() - t0)
    finally:
        if keep:
            log(f"kept {run_dir} (results/, console.log, upper/ = what the container changed)")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def _boot(base: Path, run_dir: Path, machine: str, scenario: str, detach: str, log: Log,
          timeout: float) -> int | None:
    """Run boot.sh (and so the container) inside our cgroups; clean up whatever happens.  Returns
    nspawn's exit code (None: it had to be killed)."""
    nspawn_dirs = [Path("/run/systemd"), Path("/run/systemd/nspawn"), Path("/run/systemd/nspawn/locks"),
                   Path("/run/systemd/nspawn/propagate")]
    made_by_nspawn = [d for d in nspawn_dirs if not d.exists()]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0"}
    if cgroup_mode() == "unified":
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", str(HERE / "boot.sh"),
            str(base), str(run_dir), machine, scenario, detach]
    cgroups = Cgroups(f"notify-launcher-test-{os.getpid()}-{scenario}")
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    try:
        log(f"booting {machine} ({scenario}, detach={detach or '<no key>'}, cgroup {cgroup_mode()})")
        with open(run_dir / "console.log", "wb") as console:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                    env=env, preexec_fn=cgroups.join, start_new_session=True)
        try:
            exit_code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{machine} still running after {timeout:.0f} s: asking nspawn to power it off")
            proc.send_signal(signal.SIGTERM)  # nspawn: orderly shutdown of the container
            try:
                exit_code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log(f"{machine} did not power off: SIGKILL to every process in its cgroups")
    finally:
        try:
            killed = cgroups.destroy()
            if killed:
                log(f"killed leftover pids {sorted(set(killed))}")
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()  # it is in our cgroups, so already dead unless it escaped them
                proc.wait()
            shutil.rmtree(Path("/run/systemd/nspawn/propagate") / machine, ignore_errors=True)
            for d in reversed(made_by_nspawn):
                try:
                    d.rmdir()
                except OSError:
                    pass
    return exit_code


# ---------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"one of {', '.join(SCENARIOS)}")
    p.add_argument("--source", type=Path, default=None,
                   help="the checkout to install (default: $NL_SYSTEMD_SOURCE, else this one)")
    p.add_argument("--keep", action="store_true", help="keep each run directory (results, overlay upper layer)")
    p.add_argument("--build-only", action="store_true", help="only build the cached root file system")
    p.add_argument("--verbose", "-v", action="store_true", help="print the full diagnostics of every run")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    problem = missing_prerequisites()
    if problem:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    ensure_base(log)
    log(f"base root file system: {time.monotonic() - t0:.1f} s")
    if args.build_only:
        return 0
    source = args.source.resolve() if args.source else default_source()
    log(f"launcher at {source}: detach {'supported' if supports_detach(source) else 'NOT supported'}, "
        f"serve {'supported' if supports_serve(source) else 'NOT supported'}")
    for scenario in args.scenarios or SCENARIOS:
        res = run_scenario(scenario, source, keep=args.keep, log=log)
        print(res.report())
        if args.verbose or not res.done:
            print(res.diagnostics())
    log(f"total {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
