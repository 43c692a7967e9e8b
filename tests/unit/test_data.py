"""The chunked DATA receiver against a line-by-line model of aiosmtpd's own
(RFC 5321 §4.5.2): same message, same refusals, same bytes left over, however
the stream is cut into chunks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.front.data import DataReceiver, DataState

LIMIT = 1001


def model(stream: bytes, size_limit: int | None) -> tuple[str, bytes, bytes]:
    """aiosmtpd's algorithm, one CRLF line at a time: (state, content, rest).
    A line's length is counted between LFs (a bare LF ends a line on the way
    out, where the relay normalizes line ends)."""
    state, received, lines, position = "nominal", 0, [], 0
    while True:
        end = stream.find(b"\r\n", position)
        assert end >= 0, "the stream always ends with CRLF.CRLF"
        line = stream[position : end + 2]
        position = end + 2
        if line == b".\r\n":
            break
        received += len(line)
        if state == "nominal" and any(len(p) + 1 > LIMIT for p in line[:-1].split(b"\n")):
            state = "too_long"
        if state == "nominal" and size_limit and received > size_limit:
            state = "too_much"
        lines.append(line[1:] if line.startswith(b".") else line)
    content = b"".join(lines) if state == "nominal" else b""
    return state, content, stream[position:]


tokens = st.sampled_from(
    [b"\r\n", b".", b"..", b"\n", b"\r", b"x", b"abc", b"\r\n.", b"\r\n..\r\n", b"y" * 500]
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    body = b"".join(draw(st.lists(tokens, max_size=40)))
    if draw(st.booleans()):
        body = b"." + body
    stream = body + (b"\r\n" if body and not body.endswith(b"\r\n") else b"") + b".\r\n"
    if not body:
        stream = b".\r\n"
    stream += draw(st.sampled_from([b"", b"QUIT\r\n", b"MAIL FROM:<a@b>\r\n.\r\n"]))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    return stream, cuts


@settings(max_examples=600)
@given(streams(), st.sampled_from([None, 10, 600, 2000]))
def test_same_as_aiosmtpd_whatever_the_chunks(
    case: tuple[bytes, list[int]], size_limit: int | None
) -> None:
    stream, cuts = case
    expected_state, expected_content, expected_rest = model(stream, size_limit)
    receiver = DataReceiver(size_limit)
    rest = None
    bounds = [0, *cuts, len(stream)]
    for i in range(len(bounds) - 1):
        chunk = stream[bounds[i] : bounds[i + 1]]
        if rest is not None:
            rest += chunk
        else:
            rest = receiver.feed(chunk)
    assert rest == expected_rest
    # When both limits are crossed, aiosmtpd's answer depends on which line
    # crossed first; either refusal is a refusal.
    if expected_state == "nominal":
        assert receiver.state is DataState.NOMINAL
        assert receiver.content == expected_content
    else:
        assert receiver.state is not DataState.NOMINAL


def test_long_lines_and_size() -> None:
    ok = b"x" * 999 + b"\r\n"
    receiver = DataReceiver(None)
    assert receiver.feed(ok + b".\r\n") == b""
    assert receiver.state is DataState.NOMINAL and receiver.content == ok
    receiver = DataReceiver(None)
    assert receiver.feed(b"x" * 1000 + b"\r\n.\r\n") == b""
    assert receiver.state is DataState.TOO_LONG
    # A refused message's bytes are dropped as they come: memory stays flat.
    receiver = DataReceiver(1000)
    for _ in range(100):
        assert receiver.feed((b"y" * 98 + b"\r\n") * 100) is None
        assert len(receiver._buffer) < 16
    assert receiver.feed(b".\r\nQUIT\r\n") == b"QUIT\r\n"
    assert receiver.state is DataState.TOO_MUCH and receiver.received == 1_000_000


def test_smuggling_variants_do_not_end_data() -> None:
    for fake in (b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"):
        receiver = DataReceiver(None)
        assert receiver.feed(b"a" + fake + b"MAIL FROM:<x@y>\r\n") is None
        assert receiver.feed(b".\r\n") == b""
        # One message holding the fake end, as aiosmtpd has it (a line
        # starting with a dot loses it).
        _, content, _ = model(b"a" + fake + b"MAIL FROM:<x@y>\r\n.\r\n", None)
        assert receiver.content == content and b"MAIL FROM" in content
