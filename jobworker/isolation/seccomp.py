"""The syscall filter every sandboxed job runs under (doc/sandbox.md).

`compile_filter` builds it once, at server start-up, with the system's
libseccomp (Debian's libseccomp2, through ctypes) and exports it as a
classic BPF program; the helper only loads those bytes with
prctl(PR_SET_SECCOMP) just before exec, so a job start pays no compile.
libseccomp maps each name to the right number on every architecture the
filter covers (the native one and its compat ABIs: i386 and x32 on x86_64,
arm on aarch64) and refuses the x32 range in the x86_64 branch. A
syscall of an architecture not in the filter kills the process.

Everything not listed is allowed (Docker's profile is an allow-list; ours
denies what lets a job reach past its sandbox, see `DENIED`). A denied call
fails with EPERM; clone3, whose flags a filter cannot read, fails with
ENOSYS so that libc falls back to clone, whose flags it can.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from jobworker.errors import IsolationUnavailable

# Why each group is denied; the names are the kernel's.
DENIED: dict[str, tuple[str, ...]] = {
    "entering or making namespaces (user namespaces first)": ("setns",),
    "mounting, or reaching around the private root": (
        "mount",
        "umount",
        "umount2",
        "pivot_root",
        "chroot",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "open_tree",
        "move_mount",
        "mount_setattr",
        "open_by_handle_at",
    ),
    "the kernel keyring, shared by every job of a uid": (
        "keyctl",
        "add_key",
        "request_key",
    ),
    "kernel attack surface no job needs": (
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "lookup_dcookie",
        "uselib",
        "vm86",
        "vm86old",
    ),
    "inspecting or changing other processes": (
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
    ),
    "the whole machine": (
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "syslog",
        "quotactl",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "iopl",
        "ioperm",
        "vhangup",
        "nfsservctl",
    ),
}
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
CLONE_NAMESPACES: tuple[int, ...] = (0x20000, 0x2000000, 0x4000000, 0x8000000)
CLONE_NAMESPACES += (0x10000000, 0x20000000, 0x40000000)
CLONE_NEWTIME = 0x80  # unshare only: in clone's flags these bits are a signal
# personality(2) flags that weaken the address space (ASLR off, executable
# data); 0xffffffff only queries, and is allowed.
PERSONALITY_FLAGS = (0x40000, 0x100000, 0x200000, 0x400000, 0x800000, 0x8000000)
_QUERY_BIT = 0x80000000
_ARCHES = {
    "x86_64": (0xC000003E, (0x40000003, 0x4000003E)),
    "aarch64": (0xC00000B7, (0x40000028,)),
}
_SONAME = "libseccomp.so.2"
_ACT_ALLOW = 0x7FFF0000
_CMP_MASKED_EQ = 7


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


@dataclass(frozen=True)
class SyscallFilter:
    """A compiled filter: the BPF program and the names libseccomp lacked."""

    program: bytes
    unknown: tuple[str, ...]


def _load_library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or _SONAME
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise IsolationUnavailable(
            "libseccomp is missing (Debian: apt-get install libseccomp2); install"
            " it, or pass --no-seccomp to run jobs without a syscall filter"
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_arch_add.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    )
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    return lib


class _Builder:
    """Rules added to one libseccomp context; names it lacks are noted."""

    def __init__(self, lib: ctypes.CDLL, ctx: int) -> None:
        self.lib, self.ctx = lib, ctx
        self.unknown: list[str] = []

    def deny(
        self, name: str, masks: Sequence[tuple[int, int]] = (), code: int = errno.EPERM
    ) -> None:
        """Deny `name`; with `masks`, only when (arg0 & mask) == value."""
        number = self.lib.seccomp_syscall_resolve_name(name.encode())
        if number == -1:  # __NR_SCMP_ERROR: this libseccomp predates it
            self.unknown.append(name)
            return
        conditions: list[tuple[int, int] | None] = [*masks] or [None]
        for condition in conditions:
            compares = (_ArgCmp * 1)()
            count = 0
            if condition is not None:
                compares[0] = _ArgCmp(0, _CMP_MASKED_EQ, *condition)
                count = 1
            result = self.lib.seccomp_rule_add_array(
                self.ctx, _errno_action(code), number, count, compares
            )
            if result < 0:
                raise IsolationUnavailable(
                    f"libseccomp refused the rule for {name}: {os.strerror(-result)}"
                )


def _personality_masks() -> list[tuple[int, int]]:
    """(mask, value) pairs matching every weakening personality but the query.

    A filter compares one argument once per rule, so "flag set and not
    0xffffffff" becomes: flag set with the top bit clear, or (for values
    with the top bit set) flag set with some other bit clear.
    """
    masks = [(flag | _QUERY_BIT, flag) for flag in PERSONALITY_FLAGS]
    for bit in range(31):
        masks.append((_QUERY_BIT | 1 << bit, _QUERY_BIT))
    return masks


def compile_filter(machine: str | None = None) -> SyscallFilter:
    """The job filter for this machine; raise `IsolationUnavailable`."""
    machine = machine or os.uname().machine
    if machine not in _ARCHES:
        raise IsolationUnavailable(
            f"no syscall filter for {machine}; pass --no-seccomp to run without one"
        )
    lib = _load_library()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise IsolationUnavailable("libseccomp: seccomp_init failed")
    try:
        _, compat = _ARCHES[machine]
        for arch in compat:
            if lib.seccomp_arch_add(ctx, arch) < 0:
                raise IsolationUnavailable(f"libseccomp lacks arch {arch:#x}")
        rules = _Builder(lib, ctx)
        for names in DENIED.values():
            for name in names:
                rules.deny(name)
        clone_masks = [(flag, flag) for flag in CLONE_NAMESPACES]
        rules.deny("clone", clone_masks)
        rules.deny("unshare", [*clone_masks, (CLONE_NEWTIME, CLONE_NEWTIME)])
        rules.deny("clone3", code=errno.ENOSYS)
        rules.deny("personality", _personality_masks())
        return SyscallFilter(_export(lib, ctx), tuple(rules.unknown))
    finally:
        lib.seccomp_release(ctx)


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("jobworker-seccomp", os.MFD_CLOEXEC)
    try:
        result = lib.seccomp_export_bpf(ctx, fd)
        if result < 0:
            raise IsolationUnavailable(f"libseccomp: export {os.strerror(-result)}")
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)
