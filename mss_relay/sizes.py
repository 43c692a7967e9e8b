"""Sizes and durations as written in the configuration: "20MiB", "60 MB", "15m", "30s"."""

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


_SECONDS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"\A\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*\Z")


def parse_duration(value: object) -> float:
    """Durations as written in the configuration: 300, 2.5, "30s", "15m", "1h"."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a duration such as 30s, 15m, 1h or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match or match.group(2).lower() not in _SECONDS:
            raise ValueError(
                f"{value!r} is not a duration (a number of seconds, or a number followed"
                " by s, m, h or d)"
            )
        seconds = float(match.group(1)) * _SECONDS[match.group(2).lower()]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds
