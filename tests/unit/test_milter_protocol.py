"""The milter codec: framing, negotiation, each command the filter handles, replies,
and hostile input (truncated frames, absurd lengths) without a crash."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.front import milter_protocol as mp


def frame(command: str, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + command.encode() + data


def test_frames_are_cut_whatever_the_chunks() -> None:
    stream = frame("O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)) + frame("H", b"client.test\0")
    stream += frame("B", b"x" * 70_000) + frame("E")
    for size in (1, 3, 7, 4096, len(stream)):
        decoder = mp.Decoder()
        packets = []
        for i in range(0, len(stream), size):
            packets += decoder.feed(stream[i : i + size])
        assert [p.command for p in packets] == ["O", "H", "B", "E"]
        assert packets[2].data == b"x" * 70_000 and decoder.pending == 0


def test_negotiation() -> None:
    (packet,) = mp.Decoder().feed(frame("O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)))
    assert mp.parse_optneg(packet.data) == mp.Negotiation(6, 0x1FF, 0x1FFFFF)
    reply = mp.optneg(6, mp.ACTION_ADDHDRS, mp.SKIP_UNKNOWN)
    assert reply == struct.pack(">IcIII", 13, b"O", 6, 1, 0x100)
    with pytest.raises(mp.MilterProtocolError):
        mp.parse_optneg(b"\0" * 11)


def test_macros() -> None:
    data = b"M{auth_authen}\0jdupont\0i\0" + b"4bXy1\0{mail_addr}\0a@b.mssante.fr\0"
    assert mp.parse_macros(data) == (
        "M",
        {"auth_authen": "jdupont", "i": "4bXy1", "mail_addr": "a@b.mssante.fr"},
    )
    assert mp.parse_macros(b"C") == ("C", {})
    for broken in (b"", b"Mname\0", b"Mname\0value"):
        with pytest.raises(mp.MilterProtocolError):
            mp.parse_macros(broken)


def test_connect() -> None:
    inet = b"client.test\x004" + struct.pack(">H", 2525) + b"192.0.2.7\0"
    assert mp.parse_connect(inet) == mp.Connection("client.test", "4", 2525, "192.0.2.7")
    inet6 = b"[ipv6]\x006" + struct.pack(">H", 25) + b"2001:db8::1\0"
    assert mp.parse_connect(inet6).address == "2001:db8::1"
    assert mp.parse_connect(b"localhost\0U") == mp.Connection("localhost", "U", 0, "")
    for broken in (b"", b"host", b"host\0", b"host\x004\x00", b"host\x004\x00\x19addr"):
        with pytest.raises(mp.MilterProtocolError):
            mp.parse_connect(broken)


def test_helo_mail_rcpt_header() -> None:
    assert mp.strings(b"client.test\0", 1) == ["client.test"]
    assert mp.parse_address(b"<jean.dupont@ch.mssante.fr>\0SIZE=1000\0BODY=8BITMIME\0") == (
        "jean.dupont@ch.mssante.fr",
        ["SIZE=1000", "BODY=8BITMIME"],
    )
    assert mp.parse_address(b"<>\0") == ("", [])
    assert mp.parse_header(b"Subject\0 R\xc3\xa9sultats\0") == ("Subject", " Résultats")
    assert mp.parse_header(b"X-Bin\0\xff\0")[1].encode("utf-8", "surrogateescape") == b"\xff"
    for broken in (b"", b"no-nul", b"a\0b\0c\0"):
        with pytest.raises(mp.MilterProtocolError):
            mp.parse_header(broken)


def test_replies() -> None:
    assert mp.CONTINUE == b"\0\0\0\x01c"
    assert mp.ACCEPT == b"\0\0\0\x01a" and mp.TEMPFAIL == b"\0\0\0\x01t"
    assert mp.REJECT == b"\0\0\0\x01r"
    reply = mp.replycode("550 5.7.1 Destinataire hors de l'espace de confiance 100%")
    assert reply[4:5] == b"y" and reply.endswith(b"100%%\0")
    assert struct.unpack(">I", reply[:4])[0] == len(reply) - 4
    with pytest.raises(ValueError):
        mp.replycode("250 2.0.0 OK")
    assert mp.add_header("Authentication-Results", "relay; dkim=pass") == frame(
        "h", b"Authentication-Results\0relay; dkim=pass\0"
    )
    assert mp.insert_header(0, "DKIM-Signature", "v=1") == frame(
        "i", b"\0\0\0\0DKIM-Signature\0v=1\0"
    )


@pytest.mark.parametrize(
    "stream",
    [
        b"\0\0\0\0",  # a frame of length zero
        b"\xff\xff\xff\xffO",  # four gigabytes announced
        struct.pack(">I", mp.MAX_FRAME + 1) + b"B",
        frame("Z", b"x"),  # no such command
    ],
)
def test_absurd_frames_are_protocol_errors(stream: bytes) -> None:
    with pytest.raises(mp.MilterProtocolError):
        mp.Decoder().feed(stream)


def test_a_truncated_frame_waits_and_holds_nothing_more() -> None:
    decoder = mp.Decoder()
    assert decoder.feed(frame("B", b"x" * 1000)[:-10]) == []
    assert decoder.pending == 995
    assert [p.command for p in decoder.feed(b"x" * 10)] == ["B"]


PARSERS = (
    mp.parse_optneg,
    mp.parse_macros,
    mp.parse_connect,
    mp.parse_header,
    mp.parse_address,
    mp.strings,
)


@settings(max_examples=500)
@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=8))
def test_hostile_streams_give_packets_or_a_protocol_error(raw: bytes, cuts: list[int]) -> None:
    decoder = mp.Decoder(max_frame=4096)
    try:
        start = 0
        for cut in [*cuts, len(raw)]:
            for packet in decoder.feed(raw[start : start + cut]):
                for parse in PARSERS:
                    with contextlib.suppress(mp.MilterProtocolError):
                        parse(packet.data)
            start += cut
    except mp.MilterProtocolError:
        pass
