from __future__ import annotations

import pytest

from mss_relay.core.rules.size import wire_size_limit
from mss_relay.sizes import parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1048576, 1048576),
        ("1048576", 1048576),
        ("20MiB", 20 * 1024 * 1024),
        ("20 MiB", 20 * 1024 * 1024),
        ("60MB", 60_000_000),
        ("512KB", 512_000),
        ("512KiB", 512 * 1024),
        ("1GiB", 1024**3),
        ("1.5MiB", 1536 * 1024),
        ("20mib", 20 * 1024 * 1024),
        ("100B", 100),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["20 Mo", "MiB", "-1", -1, "20MiBs", True, 1.5, None, [], "1e6"])
def test_parse_size_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_wire_limit_covers_base64_of_the_decoded_limit() -> None:
    limit = 60 * 1024 * 1024
    encoded = (limit + 2) // 3 * 4
    lines = encoded // 76 + 1
    assert wire_size_limit(limit) >= encoded + 2 * lines
    assert wire_size_limit(limit) < limit * 1.5
