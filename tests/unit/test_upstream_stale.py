"""Which failures of a pooled connection are worth a retry on another one."""

from __future__ import annotations

import aiosmtplib
import pytest

from mss_relay.delivery.upstream import _stale


@pytest.mark.parametrize(
    ("error", "stale"),
    [
        (aiosmtplib.SMTPServerDisconnected("Connection lost"), True),
        (ConnectionResetError(104, "reset"), True),
        (BrokenPipeError(32, "pipe"), True),
        (aiosmtplib.SMTPResponseException(421, "4.4.2 idle too long"), True),
        # A timeout is the upstream's answer, not a closed connection.
        (aiosmtplib.SMTPReadTimeoutError("Timed out"), False),
        (aiosmtplib.SMTPTimeoutError("Timed out"), False),
        (TimeoutError(), False),
        (aiosmtplib.SMTPResponseException(451, "4.3.0 busy"), False),
        (aiosmtplib.SMTPSenderRefused(550, "5.7.1 no", "a@b.fr"), False),
        (OSError(101, "Network is unreachable"), False),
    ],
)
def test_stale(error: Exception, stale: bool) -> None:
    assert _stale(error) is stale
