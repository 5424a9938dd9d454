"""The readers' settings in the state directory: every version an event was journaled under, and
the newest one.

    settings.d/ID.json   one file per version, named by its content's hash (ID: 16 hex digits of
                         SHA-256), never changed once written: each journal entry names the ID it was
                         journaled under, so the worker runs it with those settings (handler, timeout,
                         policies) -- a reload changes what comes after it, never what came before.
    settings.json        the newest reader's settings, for what acts on the present: a lingering
                         worker's log file and level, a systemd unit's worker, `send`, `status`.

Writers: the reader publishes settings.json at start (and whenever it remakes the state directory);
its JournalWriter writes its version into settings.d whenever it opens a journal file (`ensure`), so
the version is there before the first entry that names it, also after a compaction or a removed
state directory.  Neither is fsync'ed: both are rewritten from the configuration by the next
reader, the name checks the content (`for_entry` finds a torn version), and a reader's append must
never wait for a slow disk.  The worker's journal compaction removes the versions nothing names
any more (`collect`).
"""

from __future__ import annotations

import os
from collections import OrderedDict

from notify_launcher.config import Settings
from notify_launcher.errors import EXIT_UNUSABLE, EXIT_USAGE, LauncherError
from notify_launcher.security import refusal
from notify_launcher.statedir import StatePaths, discard, ensure_dir, write_atomic
from notify_launcher.value import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hashlib import sha256

    from notify_launcher.journal import Entry
else:
    try:  # CPython's own SHA-256: hashlib's digest, without loading OpenSSL (~2 ms of every start)
        from _sha256 import sha256
    except ImportError:  # Python 3.12 on names it _sha2; a build without the builtins (FIPS) has only hashlib's
        try:
            from _sha2 import sha256
        except ImportError:
            from hashlib import sha256

CACHE_SIZE = 8  # versions a worker keeps parsed: a reload or two, and the events still queued before them
_ID_LEN = 16


class Version(Value):
    """One version of the settings: its ID (what journal entries name) and its text."""

    __slots__ = ("id", "text")

    def __init__(self, id: str, text: bytes) -> None:
        self.id, self.text = id, text


def version(settings: Settings) -> Version:
    """The version `settings` are journaled under (its ID depends on the content only)."""
    text = settings.to_json().encode()
    return Version(_hash(text), text)


def is_id(text: str) -> bool:
    """`text` has the shape of a version ID (what a journal line may name)."""
    return len(text) == _ID_LEN and all(c in "0123456789abcdef" for c in text)


def _hash(text: bytes) -> str:
    return sha256(text).hexdigest()[:_ID_LEN]


def version_path(paths: StatePaths, ident: str) -> str:
    return os.path.join(paths.settings_versions, f"{ident}.json")


def publish(paths: StatePaths, settings: Settings) -> bool:
    """Write settings.json atomically, only when it changed (a rewrite makes workers reread it);
    True if it was written.  Raises OSError (a full disk, a removed state directory)."""
    text = settings.to_json()
    try:
        with open(paths.settings) as fh:
            if fh.read() == text:
                return False
    except (OSError, UnicodeDecodeError):
        pass
    write_atomic(paths.settings, text.encode(), sync=False)
    return True


def ensure(paths: StatePaths, ver: Version) -> None:
    """Make sure settings.d holds `ver` (a stat when it does).  Raises OSError."""
    path = version_path(paths, ver.id)
    if os.path.exists(path):
        return
    ensure_dir(paths.settings_versions)
    write_atomic(path, ver.text, sync=False)


def read(paths: StatePaths) -> Settings:
    """The published settings.  OSError (missing, unreadable) is left to the caller, which knows
    what it means there; content that is not settings, or (as root) a file someone else could have
    written or swapped, is a LauncherError."""
    _trusted("settings.json", paths.settings)
    return _parse(paths.settings, _read_bytes(paths.settings))


def _trusted(what: str, path: str) -> None:
    """As root, settings decide what root runs: a file anyone else could have written or swapped
    is refused (security.py), before a word of it is believed."""
    why = refusal(what, path, created=True)
    if why:
        raise LauncherError(why, EXIT_USAGE)


def _read_bytes(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with open(fd, "rb") as fh:
        return fh.read()


def _parse(path: str, data: bytes) -> Settings:
    try:
        return Settings.from_json(data.decode("utf-8", errors="strict"))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LauncherError(f"{path} is damaged ({type(exc).__name__}: {exc})", EXIT_UNUSABLE) from None


_cache: OrderedDict[str, Settings] = OrderedDict()


def for_entry(paths: StatePaths, entry: Entry) -> Settings:
    """The settings `entry` was journaled under.  An entry naming no version (journaled by an older
    version of the launcher, or by `send`) gets the newest, settings.json.  A version that is
    missing or damaged (its content does not match its name) is a LauncherError naming the file
    and the event: the caller logs it and runs the event with the settings it has (the newest).
    OSError reading settings.json propagates, as in `read`."""
    ident = entry.settings
    if not ident:
        return read(paths)
    cached = _cache.get(ident)
    if cached is not None:
        _cache.move_to_end(ident)
        return cached
    path = version_path(paths, ident)
    _trusted(f"the settings of event #{entry.seq}", path)
    try:
        data = _read_bytes(path)
    except OSError as exc:
        raise LauncherError(f"{path}, the settings event #{entry.seq} was journaled under, cannot be read "
                            f"({exc.strerror})", EXIT_UNUSABLE) from None
    if _hash(data) != ident:
        raise LauncherError(f"{path}, the settings event #{entry.seq} was journaled under, is damaged "
                            f"(its content does not match its name)", EXIT_UNUSABLE)
    settings = _parse(path, data)
    _cache[ident] = settings
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return settings


def newest_id(paths: StatePaths) -> str | None:
    """The version ID of settings.json (None: missing or unreadable)."""
    try:
        return _hash(_read_bytes(paths.settings))
    except OSError:
        return None


def collect(paths: StatePaths, referenced: set[str]) -> list[str]:
    """Remove the versions in settings.d that are not in `referenced` nor settings.json's; returns
    the IDs removed.  Only the worker's journal compaction calls this, holding the journal's lock
    (so no writer is between opening the journal, where it ensures its version, and appending)."""
    keep = set(referenced)
    newest = newest_id(paths)
    if newest is not None:
        keep.add(newest)
    try:
        names = os.listdir(paths.settings_versions)
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        ident = name[:-len(".json")] if name.endswith(".json") else ""
        if is_id(ident) and ident not in keep:
            discard(os.path.join(paths.settings_versions, name))
            removed.append(ident)
    return removed
