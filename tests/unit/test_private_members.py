"""The private members of aiosmtpd, aiosmtplib and dkimpy that mss-relay relies
on are there in the installed versions (pyproject.toml pins them to tested
ranges; a new release within them could still drop one), and the lists that
declare them name every one the code uses, so that they cannot drift.

The lists live next to their use: AIOSMTPD_PRIVATE (front/smtp_protocol.py),
AIOSMTPLIB_PRIVATE (delivery/upstream.py), DKIMPY_INTERNALS (signing.py,
verification.py).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import warnings
from pathlib import Path
from typing import Any

import aiosmtpd.smtp
import aiosmtplib.protocol
import dkim
import dkim.canonicalization
import pytest

from mss_relay import signing, verification
from mss_relay.delivery import upstream
from mss_relay.front import smtp_protocol

PACKAGE = Path(smtp_protocol.__file__).resolve().parents[1]
PIN = "pin {dist} in pyproject.toml to a tested version"


def _source(*relative: str) -> str:
    return "\n".join((PACKAGE / path).read_text() for path in relative)


def _assigned(module: Any, name: str) -> bool:
    """« self.NAME = » (or NAME: ...) somewhere in the module's source."""
    return (
        re.search(rf"\bself\.{re.escape(name)}\s*(?::[^=\n]+)?=", inspect.getsource(module))
        is not None
    )


# -- aiosmtpd --------------------------------------------------------------------------

# What the relay's protocol code reaches into: its own object (self, or the
# protocol aiosmtpd_init() sets up), aiosmtpd's through super(), the handler's
# server; and the methods it overrides. Names aiosmtpd has not are the relay's own.
_AIOSMTPD_USES = re.compile(
    r"\b(?:self|protocol|server|super\(\)|super\(RelaySMTP, self\))\.(_[a-z]\w*)"
)
_READER_USES = re.compile(r"\._reader\.(_[a-z]\w*)")


def _aiosmtpd_instance() -> Any:
    async def build() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return aiosmtpd.smtp.SMTP(object(), hostname="relay.test")

    return asyncio.run(build())


def _in_aiosmtpd(name: str, instance: Any) -> bool:
    smtp = aiosmtpd.smtp.SMTP
    return hasattr(smtp, name) or hasattr(instance, name) or _assigned(aiosmtpd.smtp, name)


def _aiosmtpd_used() -> set[str]:
    protocol = _source("front/smtp_protocol.py", "front/smtp_setup.py")
    handler = _source("front/smtp.py")
    overridden = re.findall(r"\bdef (_[a-z]\w*)\(", protocol)
    return {*_AIOSMTPD_USES.findall(protocol), *overridden} | set(
        re.findall(r"\bserver\.(_[a-z]\w*)", handler)
    )


@pytest.mark.parametrize("name", smtp_protocol.AIOSMTPD_PRIVATE)
def test_aiosmtpd_has_it(name: str) -> None:
    instance = _aiosmtpd_instance()
    assert _in_aiosmtpd(name, instance), (
        f"aiosmtpd.smtp.SMTP has no {name}: mss-relay's front/smtp_protocol.py relies on it; "
        + PIN.format(dist="aiosmtpd")
    )


def test_every_aiosmtpd_member_used_is_declared() -> None:
    instance = _aiosmtpd_instance()
    used = _aiosmtpd_used()
    theirs = {name for name in used if _in_aiosmtpd(name, instance)}
    declared = set(smtp_protocol.AIOSMTPD_PRIVATE)
    assert theirs <= declared, f"add to AIOSMTPD_PRIVATE: {sorted(theirs - declared)}"
    assert declared <= used, (
        f"no longer used, drop from AIOSMTPD_PRIVATE: {sorted(declared - used)}"
    )


def test_stream_reader_has_its_buffer() -> None:
    used = set(_READER_USES.findall(_source("front/smtp_protocol.py")))
    assert used == set(smtp_protocol.STREAM_READER_PRIVATE), "update STREAM_READER_PRIVATE"

    async def reader() -> asyncio.StreamReader:
        return asyncio.StreamReader()

    stream = asyncio.run(reader())
    for name in smtp_protocol.STREAM_READER_PRIVATE:
        assert hasattr(stream, name), (
            f"asyncio.StreamReader has no {name}: mss-relay's front/smtp_protocol.py relies on it"
        )


# -- aiosmtplib ------------------------------------------------------------------------


@pytest.mark.parametrize("name", upstream.AIOSMTPLIB_PRIVATE)
def test_aiosmtplib_has_it(name: str) -> None:
    protocol = aiosmtplib.protocol.SMTPProtocol
    assert hasattr(protocol, name) or _assigned(aiosmtplib.protocol, name), (
        f"aiosmtplib.protocol.SMTPProtocol has no {name}: mss-relay's delivery/upstream.py"
        " relies on it; " + PIN.format(dist="aiosmtplib")
    )


def test_every_aiosmtplib_member_used_is_declared() -> None:
    used = set(re.findall(r"\bprotocol\.(_[a-z]\w*)", _source("delivery/upstream.py")))
    assert used == set(upstream.AIOSMTPLIB_PRIVATE), "update AIOSMTPLIB_PRIVATE"


# -- dkimpy ----------------------------------------------------------------------------

_DKIMPY_INTERNALS = sorted({*signing.DKIMPY_INTERNALS, *verification.DKIMPY_INTERNALS})


def _dkimpy_has(name: str) -> bool:
    owner, _, attribute = name.rpartition(".")
    if owner == "DKIM":  # an attribute of a parsed message
        parsed = dkim.DKIM(b"From: a@example.org\r\n\r\nbody\r\n")
        return hasattr(parsed, attribute) or _assigned(dkim, attribute)
    module = dkim.canonicalization if owner == "canonicalization" else dkim
    return callable(getattr(module, attribute, None))


@pytest.mark.parametrize("name", _DKIMPY_INTERNALS)
def test_dkimpy_has_it(name: str) -> None:
    assert _dkimpy_has(name), (
        f"dkimpy has no {name}: mss-relay's signing.py or verification.py relies on it; "
        + PIN.format(dist="dkimpy")
    )


def test_every_dkimpy_name_not_exported_is_declared() -> None:
    """dkim.NAME and « from dkim.canonicalization import NAME »: those that
    dkimpy does not export must be listed."""
    source = _source("signing.py", "verification.py")
    used = {f for f in re.findall(r"\bdkim\.([A-Za-z_]\w*)\b", source) if f != "canonicalization"}
    internal = {name for name in used if name not in dkim.__all__}
    block = re.search(r"from dkim\.canonicalization import \(([^)]*)\)", source)
    imported = set(re.findall(r"\w+", block[1])) if block else set()
    internal |= {
        f"canonicalization.{n}" for n in imported if n not in dkim.canonicalization.__all__
    }
    declared = {n for n in _DKIMPY_INTERNALS if not n.startswith("DKIM.")}
    assert internal == declared, f"update DKIMPY_INTERNALS: used {sorted(internal)}"
