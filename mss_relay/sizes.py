"""Byte sizes as written in the configuration: 1048576, "20MiB", "60 MB", "512KB"."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"\A\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*\Z")


def parse_size(value: object) -> int:
    """Raise ValueError with a message fit for the user on anything else."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 20MiB, 60MB or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a size such as 20MiB, 60MB or a number of bytes")
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(
            f"{value!r} is not a size (a number of bytes, or a number followed by"
            " KB, MB, GB, KiB, MiB or GiB)"
        )
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])
