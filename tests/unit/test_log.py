"""The transaction log's lines: what structlog's JSONRenderer wrote before,
field for field, from the relay's own encoder."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import structlog
from hypothesis import given
from hypothesis import strategies as st

from mss_relay.log import LineWriter, iso_ms, make_logger

MOMENT = datetime(2026, 3, 4, 5, 6, 7, 891_234, tzinfo=UTC)


class _Odd:
    def __repr__(self) -> str:
        return "<odd>"


class _Structlog:
    def __structlog__(self) -> str:
        return "own form"


def _reference(method: str, event: str, fields: dict[str, Any]) -> str:
    """The line as structlog's JSONRenderer renders ts, level, event, fields."""
    line = {"ts": iso_ms(MOMENT), "level": method, "event": event, **fields}
    rendered = structlog.processors.JSONRenderer(ensure_ascii=False)(None, method, line)
    assert isinstance(rendered, str)
    return rendered


def _logged(tmp_path: Path, method: str, event: str, fields: dict[str, Any]) -> str:
    path = tmp_path / "log.jsonl"
    writer = LineWriter(path)
    try:
        getattr(make_logger(writer, clock=lambda: MOMENT), method)(event, **fields)
    finally:
        writer.close()
    return path.read_text(encoding="utf-8").rstrip("\n")


def test_a_line_is_what_jsonrenderer_wrote(tmp_path: Path) -> None:
    fields = {
        "session": "ABC",
        "reply": "250 2.0.0 Message accepté",
        "recipients": ["a@x.mssante.fr"],
        "size": 12,
        "none": None,
        "odd": _Odd(),
        "own": _Structlog(),
    }
    line = _logged(tmp_path, "warning", "transaction", fields)
    assert line == _reference("warning", "transaction", fields)
    assert list(json.loads(line))[:3] == ["ts", "level", "event"]
    assert json.loads(line)["ts"] == "2026-03-04T05:06:07.891Z"


@given(
    st.dictionaries(
        st.text(min_size=1).filter(lambda k: k not in ("event", "ts", "level", "self")),
        st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text()),
        max_size=5,
    ),
    st.text(),
)
def test_any_fields_render_as_jsonrenderer_did(fields: dict[str, Any], event: str) -> None:
    lines: list[str] = []

    class _Writer:
        def write(self, line: str) -> None:
            lines.append(line)

    logger = make_logger(_Writer(), clock=lambda: MOMENT)  # type: ignore[arg-type]
    logger.info(event, **fields)
    assert lines == [_reference("info", event, fields)]


def test_times_are_utc_with_milliseconds() -> None:
    paris = timezone(timedelta(hours=2))
    assert iso_ms(datetime(2026, 6, 1, 12, 0, 0, 999_999, tzinfo=paris)) == (
        "2026-06-01T10:00:00.999Z"
    )
    assert iso_ms(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"
    assert iso_ms(datetime(2026, 1, 1, tzinfo=timezone.utc)) == "2026-01-01T00:00:00.000Z"  # noqa: UP017


def test_finish_steps_see_the_rendered_line_in_order() -> None:
    lines: list[str] = []

    class _Writer:
        def write(self, line: str) -> None:
            lines.append(line)

    steps = [lambda text: text.replace("secret", "[masked]"), lambda text: text + " #1"]
    logger = make_logger(_Writer(), clock=lambda: MOMENT, finish=steps)  # type: ignore[arg-type]
    logger.info("event", reply="a secret")
    assert lines == [_reference("info", "event", {"reply": "a [masked]"}) + " #1"]
