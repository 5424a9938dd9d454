"""The local attacker: user nobody (group nogroup, no other groups), in a directory it can reach.

pytest's tmp_path lies below /tmp/pytest-of-root (0700), where nobody cannot even look; `arena()`
is a root-owned 0755 directory in /tmp instead (sticky /tmp on the way, as on a real system).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534  # uid of nobody, gid of nogroup (Debian)
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` as nobody; the caller asserts what it expects of the result."""
    return subprocess.run([*AS_NOBODY, *argv], capture_output=True, text=True, timeout=60)


def nobody_sh(script: str) -> subprocess.CompletedProcess[str]:
    return as_nobody("sh", "-c", script)


def setfacl(*args: str) -> None:
    subprocess.run(["setfacl", *args], check=True, capture_output=True)


@contextmanager
def arena() -> Iterator[Path]:
    """A root-owned 0755 directory nobody can reach (and not write to), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="nl-attacker-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def available() -> bool:
    """Root, setpriv, setfacl and the user nobody: what the attacker tests need."""
    return os.geteuid() == 0 and all(shutil.which(tool) for tool in ("setpriv", "setfacl")) and _nobody_exists()


def _nobody_exists() -> bool:
    import pwd

    try:
        return pwd.getpwnam("nobody").pw_uid == NOBODY
    except KeyError:
        return False
