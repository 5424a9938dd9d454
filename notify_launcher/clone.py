"""A fork whose child is born inside a given cgroup: clone3(CLONE_INTO_CGROUP), Linux >= 5.7.

The worker starts an action inside the action's cgroup.  From inside that cgroup a posix_spawn does
it, but getting inside is a move, which waits for an RCU grace period (containment.Cgroups): where
the worker is not in the cgroup yet, its child is cloned straight into it instead -- in it from its
first instruction, with no move and no wait.  Python has no clone3: it is called through ctypes
(imported with this module, ~2 ms, by a worker that uses cgroups), with the GIL held as os.fork()
holds it and Python's own fork bookkeeping around it (PyOS_BeforeFork, PyOS_AfterFork_Child /
_Parent: os.register_at_fork's hooks, its locks, its threads' state).

What this fork skips is glibc's: fork(3) takes the C library's locks (malloc's arenas, stdio's)
before the system call and resets them in the child; a raw clone3 does not, so the child, which
runs Python until its exec, must not inherit a lock some other thread held.  The worker's only
other thread (containment.Mover) runs C library code only with the GIL held -- which we hold
throughout the call -- or blocked in a system call (read, open, write, close: no lock of the C
library's); it never exits, so it is never in glibc's thread teardown (which frees its malloc
cache under an arena lock).  A worker with any other thread must not call `fork_into`.  (glibc in
the child still lists that thread: a setuid() there signals it, finds it gone, and goes on.)
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal

SYS_CLONE3 = 435  # the same number on every architecture Debian builds (the shared table of 5.3+)
CLONE_VM = 0x100
CLONE_INTO_CGROUP = 0x200000000
#: The errors of a kernel or a sandbox that will not clone into a cgroup: ENOSYS (Linux < 5.3, or
#: a seccomp filter such as Docker's default profile), EINVAL / E2BIG (5.3-5.6: no
#: CLONE_INTO_CGROUP), EPERM (a seccomp filter).
REFUSALS = (errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EPERM)
_NEVER_OPEN = 2**31 - 1  # no fd is ever this high: fs.nr_open is at most 2**31 - 64


class CloneFailed(OSError):
    """clone3 itself failed: nothing was forked (unlike an exec failure, reported by the child)."""


class _Args(ctypes.Structure):
    """struct clone_args (linux/sched.h), CLONE_ARGS_SIZE_VER2: up to `cgroup`."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls", "set_tid",
        "set_tid_size", "cgroup")]


_libc = ctypes.PyDLL(None, use_errno=True)  # a PyDLL call keeps the GIL, as os.fork() does
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_python = ctypes.pythonapi


def _clone3(args: _Args) -> int:
    return int(_syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args))))


def refused() -> str | None:
    """None if the kernel (and any seccomp filter) lets us clone into a cgroup, else why not ("ENOSYS
    (Function not implemented)").  The probe forks nothing: the cgroup it names is an fd never open,
    which a kernel that has CLONE_INTO_CGROUP answers with EBADF, after every check that refuses it
    (with CLONE_VM, so it does not copy our memory first: ~30 us, not ~0.5 ms)."""
    args = _Args(flags=CLONE_INTO_CGROUP | CLONE_VM, exit_signal=signal.SIGCHLD, cgroup=_NEVER_OPEN)
    _clone3(args)
    code = ctypes.get_errno()
    if code not in REFUSALS:
        return None
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


def fork_into(cgroup: int) -> int:
    """Fork, the child born in the cgroup whose directory `cgroup` (an fd) is: 0 in the child, its
    pid in the parent, as os.fork().  Raises CloneFailed (nothing forked): a refusal (REFUSALS), the
    cgroup removed (ENODEV), no permission, or what fork itself meets (EAGAIN, ENOMEM)."""
    args = _Args(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup)
    _python.PyOS_BeforeFork()
    pid = _clone3(args)
    if pid == 0:
        _python.PyOS_AfterFork_Child()
        return 0
    code = ctypes.get_errno()
    _python.PyOS_AfterFork_Parent()
    if pid < 0:
        raise CloneFailed(code, os.strerror(code))
    return pid
