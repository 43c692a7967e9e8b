"""MAIL FROM / RCPT TO paths sent upstream without aiosmtplib's parsing must
be the ones aiosmtplib would have sent."""

from __future__ import annotations

from aiosmtplib.email import quote_address
from hypothesis import example, given
from hypothesis import strategies as st

from mss_relay.delivery.upstream import plain_path

_ATOM_CHARS = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_ANY_CHARS = _ATOM_CHARS + ' .@"<>()[]\\,;:é\t'

atoms = st.text(alphabet=_ATOM_CHARS, min_size=1, max_size=6)
labels = st.text(alphabet="abz09-", min_size=1, max_size=6)
plain = st.builds(
    lambda local, domain: ".".join(local) + "@" + ".".join(domain),
    st.lists(atoms, min_size=1, max_size=3),
    st.lists(labels, min_size=1, max_size=3),
)


@given(plain)
@example("")
@example("secretariat.cardio@ch-bench.mssante.fr")
@example("2750512345678@patient.mssante.fr")
def test_a_plain_path_is_what_aiosmtplib_sends(address: str) -> None:
    assert plain_path(address) == quote_address(address).encode("ascii")


@given(st.text(alphabet=_ANY_CHARS, max_size=30))
@example("a..b@x")
@example(".a@x")
@example("a@[127.0.0.1]")
@example('"a b"@x')
@example("Jean <a@x>")
@example("a@x.")
def test_any_path_taken_is_what_aiosmtplib_sends(address: str) -> None:
    path = plain_path(address)
    if path is not None:
        assert path == quote_address(address).encode("ascii")
