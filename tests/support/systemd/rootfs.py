"""What the containers are made of, built on first use and cached under /var/cache/notify-launcher-test
(NL_SYSTEMD_CACHE), one lock for all builders:

  debian-SUITE-KEY/root  a Debian root file system per release (debootstrap minbase + PACKAGES,
                         upgraded from SUITE-updates and SUITE-security; a venv with current
                         setuptools at /opt/notify-launcher/venv; apt's package lists, so a .deb's
                         dependencies resolve against the release's own archive).  KEY hashes what
                         makes it, so a changed package list builds a new one; the old one goes
                         once unused for 6 h (STALE_AFTER).  The containers use it as an overlay's
                         lower layer: it is never modified once ready.
  pip-pyX.Y-KEY/         the project's dependency wheels for Python X.Y, downloaded on the host (the
                         containers are offline), keyed by the requirement list
  deb-KEY/               dist/notify-launcher_<version>_all.deb from `sh scripts/build-deb` on a copy
                         of the checkout, keyed by the checkout's content
  apt-SUITE/             apt's downloaded archives for that release's roots (bound into the chroot
                         at `apt-get install ./…deb`): a warm run fetches nothing

Costs measured here (2 cores, deb.debian.org): a root 69-117 s cold (debootstrap 49-90 s of it),
the .deb 5 s (and 14 s once per machine for scripts/build-deb's `apt-get build-dep`); 0 s warm.
The single-release cache of earlier harness versions (rootfs-bookworm-*, wheels-*) goes like a
stale entry: once unused (by its `ready` time) for 6 h.
"""

from __future__ import annotations

import configparser
import fcntl
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

from support import ROOT
from support.systemd.cells import VENV, Release

PACKAGES = ("systemd", "systemd-sysv", "dbus", "keepalived", "iproute2", "procps", "python3", "python3-venv")
# The venv's setuptools is too old for the project's pyproject build (bookworm: 66, bullseye: 52;
# offline, so no build isolation to fetch a newer one); pip stays the release's own (bullseye: 20.3.4).
BUILD_TOOLS = ("setuptools>=70.1", "wheel")
BASE_FORMAT = 2  # bump when the way a root is prepared changes
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
STALE_AFTER = 6 * 3600.0  # seconds unused after which another key's cache entry is removed
LEGACY = ("rootfs-*", "wheels-*")  # the single-release harness's entries (before the matrix): as stale

Log = Callable[[str], None]


class Unavailable(Exception):
    """A prerequisite is missing: the tests skip (or fail under CI=true) with this reason."""


def quiet(_: str) -> None:
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("NL_SYSTEMD_CACHE", "/var/cache/notify-launcher-test"))


# ---------------------------------------------------------------------------------------------
# mirrors


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


def security_mirror() -> str:
    return os.environ.get("NL_DEBIAN_SECURITY_MIRROR", DEFAULT_SECURITY_MIRROR).rstrip("/")


def mirror_reachable(url: str) -> str | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            return None
    except Exception as exc:  # noqa: BLE001 -- any failure means: cannot build the root here
        return f"the Debian mirror {url} cannot be reached ({exc}; NL_DEBIAN_MIRROR, NL_DEBIAN_SECURITY_MIRROR)"


def sources_list(release: Release, mirror: str) -> str:
    """apt's sources in the root: the release as a site runs it, point and security updates included."""
    suite = release.suite
    return (f"deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\n"
            f"deb {security_mirror()} {suite}-security main\n")


# ---------------------------------------------------------------------------------------------
# the cache


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _cache_lock() -> Iterator[None]:
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _cached(prefix: str, key: str, build: Callable[[Path], None], log: Log) -> Path:
    """cache_dir()/PREFIX-KEY, made by `build(dir)` unless ready; marked used now.  A failed build
    leaves nothing behind.  Other PREFIX-* entries (another key: an older package list, or another
    checkout's) are removed only once unused for STALE_AFTER: checkouts of different commits share
    this cache, and a root may be an overlay's lower layer of a container booting right now."""
    final = cache_dir() / f"{prefix}-{key}"
    if not (final / "ready").exists():
        with _cache_lock():
            if not (final / "ready").exists():
                others = [*cache_dir().glob(f"{prefix}-*"), *(p for g in LEGACY for p in cache_dir().glob(g))]
                for stale in others:
                    if stale.name != final.name and time.time() - _last_used(stale) > STALE_AFTER:
                        log(f"removing {stale}, unused for {STALE_AFTER / 3600:g} h")
                        _remove_tree(stale)
                work = final.with_name(final.name + ".build")
                _remove_tree(work)
                work.mkdir(parents=True)
                try:
                    build(work)
                    (work / "ready").write_text(f"{time.time()}\n")
                except BaseException:
                    _remove_tree(work)
                    raise
                work.rename(final)
    (final / "used").touch()
    return final


def _last_used(entry: Path) -> float:
    for marker in ("used", "ready"):
        try:
            return (entry / marker).stat().st_mtime
        except OSError:
            pass
    return 0.0  # a build that never finished


def _run(argv: list[str], what: str, log_file: Path | None = None, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> None:
    """Run a build step; its output goes to `log_file` (or is captured) and is quoted on failure."""
    if log_file is not None:
        with open(log_file, "ab") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                  cwd=cwd)
        tail = log_file.read_text(errors="replace")[-3000:]
    else:
        res = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        done, tail = res, (res.stdout + res.stderr).decode(errors="replace")[-3000:]
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{tail}")


def _chroot(root: Path, *argv: str, log_file: Path | None = None) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
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


# ---------------------------------------------------------------------------------------------
# root file systems


def apt_archives(release: Release) -> Path:
    """apt's archive cache for `release` (boot.sh binds it at /var/cache/apt/archives)."""
    path = cache_dir() / f"apt-{release.suite}"
    (path / "partial").mkdir(parents=True, exist_ok=True)
    return path


def ensure_root(release: Release, log: Log = quiet) -> Path:
    """The cached root file system of `release` (built on first use, 1-2 minutes)."""
    key = _key(release.suite, PACKAGES, BUILD_TOOLS, release.python, BASE_FORMAT, platform.machine())

    def build(work: Path) -> None:
        mirror = find_mirror()
        for url in (f"{mirror}/dists/{release.suite}/Release",
                    f"{security_mirror()}/dists/{release.suite}-security/Release"):
            problem = mirror_reachable(url)
            if problem:
                raise Unavailable(problem)
        root, t0 = work / "root", time.monotonic()
        log(f"debootstrap {release.suite} from {mirror} into {root} (about a minute)")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", release.suite, str(root),
              mirror], "debootstrap", work / "debootstrap.log")
        log(f"debootstrap done in {time.monotonic() - t0:.0f} s; updates, then the venv")
        (root / "etc" / "apt" / "sources.list").write_text(sources_list(release, mirror))
        if not release.check_valid_until:
            # debootstrap does not check Valid-Until; apt does, at every `apt-get update`
            (root / "etc" / "apt" / "apt.conf.d" / "99notify-launcher-valid-until").write_text(
                f"// {release.suite}'s Release files may be past their Valid-Until on a frozen mirror\n"
                'Acquire::Check-Valid-Until "false";\n')
        for step in (("apt-get", "update"), ("apt-get", "-y", "dist-upgrade"), ("apt-get", "clean")):
            _chroot(root, *step, log_file=work / "apt.log")
        tools = root / "opt" / "notify-launcher" / "build-tools"
        tools.mkdir(parents=True)
        _download_wheels(list(BUILD_TOOLS), release.python, tools)
        _chroot(root, "/usr/bin/python3", "-m", "venv", VENV, log_file=work / "venv.log")
        _chroot(root, f"{VENV}/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
                "--find-links", "/opt/notify-launcher/build-tools", "--upgrade", *BUILD_TOOLS,
                log_file=work / "venv.log")
        (root / "etc" / "hostname").write_text("nl-test\n")
        log(f"{release} root file system ready in {time.monotonic() - t0:.0f} s")

    return _cached(f"debian-{release.suite}", key, build, log) / "root"


# ---------------------------------------------------------------------------------------------
# the project's dependencies (venv install)


def requirements(source: Path, python: str) -> list[str]:
    """The project's install_requires for Python `python`: environment markers are evaluated here,
    for that version (pip download evaluates them for the Python it runs on, the host's)."""
    cfg = configparser.ConfigParser()
    cfg.read(source / "setup.cfg")
    text = cfg.get("options", "install_requires", fallback="")
    env = {"python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
           "platform_system": "Linux", "platform_machine": platform.machine()}
    out: list[str] = []
    for line in filter(None, (line.strip() for line in text.splitlines())):
        req = Requirement(line)
        if req.marker is None or Marker(str(req.marker)).evaluate(env):
            req.marker = None
            out.append(str(req))
    return out


def _pip_python() -> str:
    """A host Python with pip, to download wheels (the container is offline)."""
    for python in (sys.executable, str(ROOT / ".venv" / "bin" / "python"), "python3"):
        if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return python
    raise Unavailable("no Python with pip on the host to download wheels (run scripts/setup)")


def _download_wheels(reqs: list[str], python: str, dest: Path) -> None:
    """Wheels for CPython `python` on this machine's architecture (Requires-Python and tags checked
    by pip for that version).  Dependencies' own markers are evaluated for the host's Python: none of
    today's (python-daemon, lockfile, filelock, psutil) has any."""
    machine = platform.machine()
    argv = [_pip_python(), "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
            "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            "--abi", "cp" + python.replace(".", ""), "--abi", "abi3", "--abi", "none",
            "--platform", f"manylinux2014_{machine}", "--platform", f"manylinux_2_28_{machine}",
            "--platform", f"linux_{machine}", "-d", str(dest), *reqs]
    try:
        _run(argv, "downloading wheels")
    except RuntimeError as exc:
        raise Unavailable(f"cannot download the wheels for {' '.join(reqs)} on the host: {exc}") from exc


def ensure_wheels(source: Path, python: str, log: Log = quiet) -> Path:
    """Wheels of the project's dependencies for Python `python`, cached by requirement list."""
    reqs = requirements(source, python)

    def build(work: Path) -> None:
        log(f"downloading wheels for Python {python}: {' '.join(reqs)}")
        if reqs:
            _download_wheels(reqs, python, work)

    return _cached(f"pip-py{python}", _key(reqs, python, platform.machine()), build, log)


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


# ---------------------------------------------------------------------------------------------
# the Debian package (deb install)

# Not the project: what a checkout holds besides (virtualenvs, caches, build output).
NOT_SOURCE = (".git", ".venv", "dist", "build", "__pycache__", "*.pyc", "*.egg-info", ".mypy_cache",
              ".pytest_cache", ".ruff_cache", ".hypothesis")


def _source_key(source: Path) -> str:
    """A hash of the checkout's files (what `scripts/build-deb` can see), names and contents."""
    digest = hashlib.sha256()
    ignore = shutil.ignore_patterns(*NOT_SOURCE)
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(set(dirnames) - ignore(dirpath, dirnames))
        for name in sorted(set(filenames) - ignore(dirpath, filenames)):
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(source)).encode() + b"\0")
            digest.update(path.read_bytes() if not path.is_symlink() else os.readlink(path).encode())
    return digest.hexdigest()[:16]


def ensure_deb(source: Path, log: Log = quiet) -> Path:
    """dist/notify-launcher_<version>_all.deb of `source`, built as the README says (`sh
    scripts/build-deb`, as root: it installs its build dependencies itself), in a copy of the
    checkout so that the build leaves the checkout as it was; cached by the checkout's content."""
    if not (source / "scripts" / "build-deb").exists():
        raise Unavailable(f"{source} has no scripts/build-deb (a checkout from before the Debian package)")

    def build(work: Path) -> None:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="nl-build-deb-", dir="/var/tmp") as tmp:
            tree = Path(tmp) / "notify-launcher"
            shutil.copytree(source, tree, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
            log(f"sh scripts/build-deb in a copy of {source}")
            _run(["sh", "scripts/build-deb"], "sh scripts/build-deb", work / "build-deb.log", cwd=tree,
                 env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"})
            debs = sorted((tree / "dist").glob("notify-launcher_*_all.deb"))
            if len(debs) != 1:
                raise RuntimeError(f"sh scripts/build-deb left {[d.name for d in debs]} in dist/, expected one "
                                   f"notify-launcher_<version>_all.deb (log: {work / 'build-deb.log'})")
            shutil.copy2(debs[0], work / debs[0].name)
        log(f"{debs[0].name} built in {time.monotonic() - t0:.0f} s")

    built = _cached("deb", _source_key(source), build, log)
    return next(built.glob("notify-launcher_*_all.deb"))
