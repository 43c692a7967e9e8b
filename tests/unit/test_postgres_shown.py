"""What a log line or /healthz shows of a state.database URL: where the
server is, never its password."""

from __future__ import annotations

import pytest

from mss_relay.state.postgres import shown


@pytest.mark.parametrize(
    ("url", "line"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u@h:5432/db"),
        ("postgresql://u@h/db?sslmode=verify-full", "postgresql://u@h/db"),
        (
            "postgresql://u:secret@db1:5432,db2:5433/db?target_session_attrs=read-write",
            "postgresql://u@db1:5432,db2:5433/db",
        ),
        ("postgresql://db1,db2:6432/db", "postgresql://db1,db2:6432/db"),  # db1 on 5432
        ("postgresql://u@h/db?password=secret", "postgresql://u@h/db"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, line: str) -> None:
    assert shown(url) == line
    assert "secret" not in shown(url)
