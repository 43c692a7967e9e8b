from __future__ import annotations

import re

import pytest

from mss_relay.front.replies import localize

ENHANCED = re.compile(r"^\d{3} [245]\.\d{1,3}\.\d{1,3} \S")


@pytest.mark.parametrize(
    "stock",
    [
        "250 OK",
        "221 Bye",
        "500 Error: bad syntax",
        "500 Command line too long",
        '500 Error: command "FOO" not recognized',
        "503 Error: send HELO first",
        "503 Error: need MAIL command",
        "503 Error: need RCPT command",
        "503 Error: nested MAIL command",
        "530 Must issue a STARTTLS command first",
        "530 5.7.0 Authentication required",
        "538 5.7.11 Encryption required for requested authentication mechanism",
        "535 5.7.8 Authentication credentials invalid",
        "501 Syntax: MAIL FROM: <address>",
        "552 Error: message size exceeds fixed maximum message size",
        "552 Error: Too much mail data",
        "555 MAIL FROM parameters not recognized or not implemented",
        "502 EXPN not implemented",
        "500 Line too long (see RFC5321 4.5.3.1.6)",
        "554 Command refused due to lack of security",
        "451 something unexpected",
    ],
)
def test_stock_replies_get_an_enhanced_code(stock: str) -> None:
    localized = localize(stock)
    assert ENHANCED.match(localized), localized
    assert localized[:3] == stock[:3]


@pytest.mark.parametrize(
    "bare", ["220 host ESMTP mss-relay", "354 End data with <CR><LF>.<CR><LF>"]
)
def test_greeting_and_data_go_ahead_stay_bare(bare: str) -> None:
    assert localize(bare) == bare


def test_our_own_replies_pass_through() -> None:
    ours = "550 5.7.1 <x@gmail.com> : destinataire hors de l'espace de confiance MSSanté"
    assert localize(ours) == ours
