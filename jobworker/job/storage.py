"""What output the jobs may store: a quota per user and a free-disk guard.

`StorageGuard` (reactor thread only) counts the bytes of output each
owner's jobs hold and reads the free space of the state directory's
filesystem. The manager asks it to `admit` a start (`StorageExhausted`,
naming the cap, when the owner's quota is used up or the disk is below its
floor); each job's `OutputLog` asks its owner's `OwnerStorage` how much more
it may store, and is truncated like at its own cap when that is nothing.
See doc/output.md ("Storage").
"""

from __future__ import annotations

import os
from collections.abc import Callable

from jobworker.errors import StorageExhausted
from jobworker.units import format_size
from jobworker.untrusted import shown

# Output one user's jobs may hold together (`--user-output-quota`).
USER_OUTPUT_QUOTA = 10 << 30
# Free space the state directory's filesystem keeps (`--min-free-disk`).
MIN_FREE_DISK = 1 << 30


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on `path`'s filesystem.

    0 when it cannot be read: rather refuse output than fill a disk unseen.
    """
    try:
        stat = os.statvfs(path)
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


class StorageGuard:
    """Output bytes per owner within `quota`, and the disk above `min_free`.

    `quota=None` is no quota; `free` reads the free bytes of the state
    directory (`free_bytes` of it by default).
    """

    def __init__(
        self,
        state_dir: str,
        quota: int | None = USER_OUTPUT_QUOTA,
        min_free: int = MIN_FREE_DISK,
        free: Callable[[], int] | None = None,
    ) -> None:
        if quota is not None and quota < 0:
            raise ValueError(f"the output quota must not be negative: {quota}")
        if min_free < 0:
            raise ValueError(f"the free-disk floor must not be negative: {min_free}")
        self.quota = quota
        self.min_free = min_free
        self._free = free if free is not None else lambda: free_bytes(state_dir)
        self._used: dict[str, int] = {}

    def used(self, owner: str) -> int:
        """Bytes of output `owner`'s jobs hold."""
        return self._used.get(owner, 0)

    def admit(self, owner: str) -> None:
        """`StorageExhausted` naming the cap if a new job could store nothing."""
        room, cap = self.room(owner)
        if room <= 0:
            raise StorageExhausted(self._refusal(owner, cap))

    def room(self, owner: str) -> tuple[int, str]:
        """How many more bytes `owner`'s jobs may store, and the cap that says so."""
        disk = self._free() - self.min_free
        if self.quota is None or disk < self.quota - self.used(owner):
            return disk, "min-free-disk"
        return self.quota - self.used(owner), "user-output-quota"

    def stored(self, owner: str, count: int) -> None:
        """`owner`'s jobs now hold `count` more bytes."""
        self._used[owner] = self.used(owner) + count

    def released(self, owner: str, count: int) -> None:
        """A removed job of `owner` held `count` bytes: they are free again."""
        left = self.used(owner) - count
        if left > 0:
            self._used[owner] = left
        else:
            self._used.pop(owner, None)

    def account(self, owner: str) -> OwnerStorage:
        """The view of this guard one of `owner`'s output logs uses."""
        return OwnerStorage(self, owner)

    def _refusal(self, owner: str, cap: str) -> str:
        if cap == "min-free-disk":
            return (
                f"the server's disk is nearly full (below min-free-disk"
                f" {format_size(self.min_free)} free); no job can start until"
                " space is freed"
            )
        return (
            f"{shown(owner)} holds {format_size(self.used(owner))} of output,"
            f" the most one user may keep (user-output-quota"
            f" {format_size(self.quota or 0)}); remove finished jobs first"
        )


class OwnerStorage:
    """One owner's share of a `StorageGuard`, as an `OutputLog` asks it."""

    def __init__(self, guard: StorageGuard, owner: str) -> None:
        self._guard = guard
        self._owner = owner

    def room(self) -> tuple[int, str]:
        """How many more bytes may be stored, and the cap that limits them."""
        return self._guard.room(self._owner)

    def stored(self, count: int) -> None:
        """`count` more bytes were stored."""
        self._guard.stored(self._owner, count)
