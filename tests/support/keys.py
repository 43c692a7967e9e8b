"""A fixed pseudonym key for tests of the stores (the relay makes its own)."""

from __future__ import annotations

from mss_relay.pseudonym import KEY_BYTES, Pseudonyms

TEST_PSEUDONYMS = Pseudonyms(b"k" * KEY_BYTES)
