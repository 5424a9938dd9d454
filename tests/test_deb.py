"""The Debian package as `sh scripts/build-deb` leaves it: built from a copy of the checkout (which
stays as it was), its metadata and files read back with dpkg-deb, and lintian's verdict; the man
page names every option the commands have.  Installing it into real bookworm and trixie roots
under systemd is the CI matrix's part (tests/support/systemd/)."""

from __future__ import annotations

import email
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from notify_launcher import __version__
from support import LAUNCHER, ROOT
from support.marks import needs
from support.systemd.rootfs import NOT_SOURCE

DEBIAN_DEPENDS = {"python3:any", "python3-daemon", "python3-filelock", "python3-psutil"}
COMMANDS = ("", "serve", "check-config", "send", "status", "history", "wait", "log", "import")

builds = needs("root, apt-get and dpkg-deb (scripts/build-deb installs its build dependencies as root)",
               os.geteuid() == 0 and shutil.which("apt-get") is not None and shutil.which("dpkg-deb") is not None)


def _tree(top: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory below `top` but dist/: path -> (size, mtime)."""
    out = {}
    for path in sorted(top.rglob("*")):
        rel = path.relative_to(top)
        if rel.parts[0] != "dist":
            st = path.lstat()
            out[str(rel)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`sh scripts/build-deb` in a copy of the checkout, as a user runs it; the copy must stay as it
    was but for dist/, which holds exactly the one .deb."""
    checkout = tmp_path_factory.mktemp("deb") / "notify-launcher"
    shutil.copytree(ROOT, checkout, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    before = _tree(checkout)
    res = subprocess.run(["sh", "scripts/build-deb"], cwd=checkout, capture_output=True, text=True,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"})
    assert res.returncode == 0, f"sh scripts/build-deb exited {res.returncode}:\n{res.stdout}{res.stderr}"
    assert _tree(checkout) == before, "scripts/build-deb changed the checkout (it must build out of tree)"
    debs = sorted(p.name for p in (checkout / "dist").iterdir())
    assert debs == [f"notify-launcher_{__version__}_all.deb"]
    return checkout / "dist" / debs[0]


def _field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def _files(deb: Path, tarball: str) -> dict[str, tarfile.TarInfo | bytes]:
    """The data (--fsys-tarfile) or control (--ctrl-tarfile) archive: path -> content (regular
    files) or member (the rest)."""
    data = subprocess.run(["dpkg-deb", tarball, str(deb)], capture_output=True, check=True).stdout
    out: dict[str, tarfile.TarInfo | bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix(".")
            extracted = tar.extractfile(member) if member.isfile() else None
            out[name] = extracted.read() if extracted is not None else member
    return out


@builds
def test_metadata_names_only_debian_packages(deb: Path) -> None:
    assert (_field(deb, "Package"), _field(deb, "Version"), _field(deb, "Architecture")) == \
        ("notify-launcher", __version__, "all")
    depends = {d.strip() for d in _field(deb, "Depends").split(",")}
    assert {re.sub(r"\s*\(.*\)", "", d) for d in depends} == DEBIAN_DEPENDS, depends
    # bookworm's versions (filelock with Debian's fix of CVE-2025-68146), so trixie's newer ones fit too
    assert {"python3-daemon (>= 2.3.2)", "python3-filelock (>= 3.9.0-1+deb12u1)",
            "python3-psutil (>= 5.9.4)"} <= depends, depends
    assert _field(deb, "Recommends") == "keepalived, logrotate"


@builds
def test_installed_metadata_requires_the_debian_floors_it_depends_on(deb: Path, tmp_path: Path) -> None:
    """`pip check` and importlib.metadata read dist-info/METADATA in an installed .deb: its floors must be
    the Debian ones the package depends on, not setup.cfg's for pip (filelock 3.30), which no Debian
    release meets (Debian backports the CVE fixes)."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    [metadata] = tmp_path.glob("usr/lib/python3/dist-packages/notify_launcher-*.dist-info/METADATA")
    required = map(Requirement, email.message_from_string(metadata.read_text()).get_all("Requires-Dist"))
    # (Debian package, floors, marker): python-daemon is python3-daemon; the test extra is no dependency
    stated = sorted(("python3-" + re.sub(r"^python-", "", r.name.lower()), [Version(s.version) for s in r.specifier],
                     str(r.marker or "")) for r in required if "extra" not in str(r.marker))
    # python3-filelock (>= 3.9.0-1+deb12u1): the upstream version, without epoch and Debian revision
    depends = re.findall(r"(python3-[\w.+-]+) \(>= (?:\d+:)?([^)\s]+?)(?:-[^-)\s]+)?\)", _field(deb, "Depends"))
    assert stated == sorted((package, [Version(version)], "") for package, version in depends)


@builds
def test_files_as_the_readme_says(deb: Path) -> None:
    files = _files(deb, "--fsys-tarfile")
    script = files["/usr/bin/notify-launcher"]
    assert isinstance(script, bytes) and script.startswith(b"#!/usr/bin/python3\n")
    assert files["/etc/keepalived/notify-launcher.ini"] == (ROOT / "contrib" / "notify-launcher.ini").read_bytes()
    assert files["/etc/logrotate.d/notify-launcher"] == (ROOT / "contrib" / "notify-launcher.logrotate").read_bytes()
    units = [name for name in files if name.endswith("/systemd/system/notify-launcher.service")]
    assert len(units) == 1, units
    unit = files[units[0]]
    assert isinstance(unit, bytes) and b"\nExecStart=/usr/bin/notify-launcher serve " in unit
    assert "/usr/share/man/man8/notify-launcher.8.gz" in files
    package = {Path(n).name for n in files if n.startswith("/usr/lib/python3/dist-packages/notify_launcher/")}
    assert {p.name for p in (ROOT / "notify_launcher").glob("*.py")} <= package
    control = _files(deb, "--ctrl-tarfile")
    conffiles = control["/conffiles"]
    assert isinstance(conffiles, bytes) and set(conffiles.decode().split()) == {
        "/etc/keepalived/notify-launcher.ini", "/etc/logrotate.d/notify-launcher"}
    postinst = control["/postinst"]  # installed, not enabled, not started
    assert isinstance(postinst, bytes) and b"deb-systemd-invoke" not in postinst
    assert b"was-enabled 'notify-launcher.service'" in postinst


@builds
@needs("lintian (scripts/setup installs it)", shutil.which("lintian") is not None)
def test_lintian_finds_no_error_and_no_warning(deb: Path) -> None:
    res = subprocess.run(["lintian", "--display-info", str(deb)], capture_output=True, text=True)
    tags = [line for line in res.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert tags == [] and res.returncode == 0, res.stdout + res.stderr


def test_man_page_names_every_option() -> None:
    page = (ROOT / "docs" / "notify-launcher.8").read_text().replace("\\-", "-")
    for command in COMMANDS:
        helptext = subprocess.run([LAUNCHER, *([command] if command else []), "--help"], capture_output=True,
                                  text=True, check=True).stdout
        usage = helptext.split("\n\n", 1)[0]
        options = set(re.findall(r"(?:^|[\s\[(|])(--?[a-z][a-z-]*)", usage, re.M)) - {"-h"}
        missing = sorted(o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", page))
        assert not missing, f"docs/notify-launcher.8 does not mention {missing} of `notify-launcher {command}`"


def test_operating_doc_shows_the_shipped_logrotate_file() -> None:
    assert (ROOT / "contrib" / "notify-launcher.logrotate").read_text() in (ROOT / "docs" / "operating.md").read_text()
