"""A real, small file system for the log to fill: a tmpfs mounted by the test.

Mounting needs CAP_SYS_ADMIN (root in a privileged container). Without it the
test is skipped with the reason; under CI=true it fails instead when the
process has the capability and the mount still did not work (it should have).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

_CAP_SYS_ADMIN = 21


def _may_mount() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    return False


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `directory` for the test's duration."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        done = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory))
        reason = done.stderr.strip() or f"mount exited with {done.returncode}"
        mounted = done.returncode == 0
    except FileNotFoundError:
        reason, mounted = "no mount command", False
    if not mounted:
        if os.environ.get("CI") == "true" and _may_mount():
            pytest.fail(f"CAP_SYS_ADMIN held but mounting a tmpfs failed: {reason}")
        pytest.skip(f"a real full file system is needed and a tmpfs cannot be mounted: {reason}")
    try:
        yield directory
    finally:
        # Lazy: a relay still holding its log open must not keep the mount.
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full (ENOSPC, for real)."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with filler.open("ab", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                break
    # tmpfs may still take a few bytes in a partly used page: take them too.
    with filler.open("ab", buffering=0) as out, contextlib.suppress(OSError):
        while out.write(b"\0"):
            pass
    return filler


def remount(directory: Path, mode: str) -> bool:
    """Remount read-only ("ro") or read-write ("rw"); False when the kernel
    refuses (a file open for writing makes a read-only remount busy)."""
    return _mount("-o", f"remount,{mode}", str(directory)).returncode == 0
