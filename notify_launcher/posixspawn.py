"""posix_spawn(3) called through ctypes, so that the child starts with *every* signal at its default.

os.posix_spawn builds the spawn's attributes itself, from signal numbers that sigaddset accepts:
glibc refuses its internal signals (32 and 33: SIGCANCEL, SIGSETXID), and its posix_spawn sets
those to SIG_IGN in the child unless the attributes' default set holds them -- an ignored
disposition survives the exec, so every action, and every daemon it starts, would have them
ignored.  Here the default set is written as the bits of a sigset_t (posix_spawnattr_setsigdefault
copies it as it is), 32 and 33 too.  The attributes are made once; each spawn costs ~40 us of CPU more than os.posix_spawn (ctypes' calls and the argv and
environment arrays), still far less than a fork of the worker.

ctypes is loaded already in a worker that uses cgroups (clone.py); without cgroups the first spawn
loads it (~2.5 ms).  The child is the C library's (clone CLONE_VM|CLONE_VFORK, then exec): it runs
no Python, so the worker's other thread is no concern.
"""

from __future__ import annotations

import ctypes
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

#: posix_spawnattr_setflags' flags (spawn.h: the same values in glibc and musl).
SETSIGDEF, SETSIGMASK, SETSID = 0x04, 0x08, 0x80
_SIGSET_WORDS = 1024 // (8 * ctypes.sizeof(ctypes.c_ulong))  # sigset_t: 1024 bits
_ATTR_SIZE = 1024  # bytes, more than any C library's posix_spawnattr_t (glibc's: 336)
_ACTIONS_SIZE = 256  # bytes, more than posix_spawn_file_actions_t (glibc's: 80)
_ENCODING = sys.getfilesystemencoding()  # as os.posix_spawn encodes argv and the environment

_libc = ctypes.CDLL(None, use_errno=True)  # (a CDLL call releases the GIL, as os.posix_spawn does)
_made: dict[Sequence[int], ctypes.Array[ctypes.c_char]] = {}


def _attributes(default: Sequence[int]) -> ctypes.Array[ctypes.c_char]:
    """Its own session, an empty signal mask, the signals `default` at their default.  Made once."""
    attr = _made.get(default)
    if attr is None:
        bits = 8 * ctypes.sizeof(ctypes.c_ulong)
        sigset = (ctypes.c_ulong * _SIGSET_WORDS)()
        for signum in default:
            sigset[(signum - 1) // bits] |= 1 << ((signum - 1) % bits)
        attr = _made[default] = ctypes.create_string_buffer(_ATTR_SIZE)
        _libc.posix_spawnattr_init(attr)
        _libc.posix_spawnattr_setflags(attr, ctypes.c_short(SETSIGDEF | SETSIGMASK | SETSID))
        _libc.posix_spawnattr_setsigdefault(attr, sigset)
        _libc.posix_spawnattr_setsigmask(attr, (ctypes.c_ulong * _SIGSET_WORDS)())
    return attr


def spawn(argv: list[str], env: dict[str, str], dups: list[tuple[int, int]], default: Sequence[int]) -> int:
    """Start `argv` (argv[0] a path) with environment `env`, each (fd, target) of `dups` dup2'd in
    the child, in a session of its own, no signal blocked and the signals `default` (any number the
    kernel has, the C library's own too) at their default; its pid.  Raises OSError as
    os.posix_spawn does (what the exec met: ENOENT, EACCES, ENOEXEC...), and ValueError for a NUL in
    `argv` or `env`."""
    sys.audit("os.posix_spawn", argv[0], argv, env)
    words = [arg.encode(_ENCODING, "surrogateescape") for arg in argv]
    entries = [f"{name}={value}".encode(_ENCODING, "surrogateescape") for name, value in env.items()]
    if b"\0" in b"".join(words + entries):  # a C string would end there: refused, as os.posix_spawn does
        raise ValueError("embedded null byte")
    args = (ctypes.c_char_p * (len(words) + 1))(*words)
    environ = (ctypes.c_char_p * (len(entries) + 1))(*entries)
    actions = ctypes.create_string_buffer(_ACTIONS_SIZE)
    pid = ctypes.c_int()
    code = _libc.posix_spawn_file_actions_init(actions)
    try:
        for fd, target in dups:
            code = code or _libc.posix_spawn_file_actions_adddup2(actions, fd, target)
        code = code or _libc.posix_spawn(ctypes.byref(pid), args[0], actions, _attributes(default), args, environ)
    finally:
        _libc.posix_spawn_file_actions_destroy(actions)
    if code:
        raise OSError(code, os.strerror(code), argv[0])
    return pid.value
