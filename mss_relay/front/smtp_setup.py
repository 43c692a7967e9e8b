"""The set-up of a connection's aiosmtpd protocol, with what does not change
from one connection to the next looked up once per listener."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, _AuthMechAttr, login_always_fail
from aiosmtpd.smtp import __ident__ as aiosmtpd_ident
from aiosmtpd.smtp import log as aiosmtpd_log


@dataclass(frozen=True, slots=True)
class Introspection:
    """What aiosmtpd's SMTP.__init__ looks up at every connection by walking
    the protocol and the handler (inspect.getmembers, dir, inspect.signature):
    some 10 % of the event loop when each message comes on a connection of
    its own (Thunderbird, Outlook). It depends on the two classes only, so a
    listener looks it up once; each connection binds the names to itself."""

    commands: tuple[tuple[str, str], ...]  # (SMTP command, smtp_* attribute)
    mechanisms: tuple[tuple[str, str, bool], ...]  # (AUTH mechanism, attribute, builtin)
    hooks: tuple[tuple[str, str], ...]  # (hook, handle_* attribute of the handler)
    ehlo_hook: str | None  # aiosmtpd's _ehlo_hook_ver: None, "old" or "new"

    # The same, as mappings every connection's Bound views share.
    command_names: Mapping[str, str] = field(init=False, repr=False, compare=False)
    hook_names: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "command_names", types.MappingProxyType(dict(self.commands)))
        object.__setattr__(self, "hook_names", types.MappingProxyType(dict(self.hooks)))

    @classmethod
    def of(cls, protocol: type[SMTP], handler: type[Any]) -> Introspection:
        """As aiosmtpd 1.4 finds them on the instances (same names, same order)."""
        mechanisms: dict[str, tuple[str, bool]] = {}
        for owner, builtin in ((protocol, True), (handler, False)):
            for name, member in inspect.getmembers(owner):
                if name.startswith("auth_"):
                    default = name.replace("auth_", "").replace("__", "-")
                    mechanism = getattr(member, "__auth_mechanism_name__", default)
                    mechanisms[mechanism] = (name, builtin)
        return cls(
            commands=tuple(
                (m.replace("smtp_", ""), m) for m in dir(protocol) if m.startswith("smtp_")
            ),
            mechanisms=tuple((m, name, builtin) for m, (name, builtin) in mechanisms.items()),
            hooks=tuple(
                (m.replace("handle_", ""), m) for m in dir(handler) if m.startswith("handle_")
            ),
            ehlo_hook=_ehlo_hook_version(handler),
        )


def _ehlo_hook_version(handler: type[Any]) -> str | None:
    """aiosmtpd's test of handle_EHLO's arguments, on the class: a plain
    function counts self, which the bound method aiosmtpd looks at does not."""
    hook = getattr(handler, "handle_EHLO", None)
    if hook is None:
        return None
    arguments = len(inspect.signature(hook).parameters)
    if inspect.isfunction(inspect.getattr_static(handler, "handle_EHLO")):
        arguments -= 1
    if arguments == 5:
        return "new"
    # The 4-argument form aiosmtpd 1.4 still takes (with a DeprecationWarning)
    # is refused: the relay's handler has the 5-argument one.
    raise RuntimeError("Unsupported EHLO Hook")


class Bound(Mapping[str, Any]):
    """aiosmtpd's per-connection dicts of bound methods (command -> smtp_*,
    hook -> handle_*), as a view that binds a method when it is looked up:
    a connection uses a handful of its 20 (13 commands, 7 hooks), and
    binding them all was a quarter of the protocol's and handler's set-up
    (cProfile of the listener's factory). Same keys, same order, same values."""

    __slots__ = ("_names", "_owner")

    def __init__(self, owner: object, names: Mapping[str, str]) -> None:
        self._owner = owner
        self._names = names  # key -> attribute, shared by every connection

    def __getitem__(self, key: str) -> Any:
        return getattr(self._owner, self._names[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, key: object) -> bool:
        return key in self._names


def aiosmtpd_init(
    protocol: SMTP,
    handler: Any,
    found: Introspection,
    *,
    loop: asyncio.AbstractEventLoop,
    data_size_limit: int | None,
    hostname: str,
    ident: str | None,
    tls_context: ssl.SSLContext | None,
    require_starttls: bool,
    timeout: float,
    auth_required: bool,
    auth_require_tls: bool,
) -> None:
    """aiosmtpd 1.4's SMTP.__init__, for the arguments the relay passes (the
    others at aiosmtpd's defaults), with the introspection done once per
    listener (Introspection). tests/unit/test_smtp_connection.py checks that it
    leaves the same attributes, with the same values, as aiosmtpd's own."""
    protocol.__ident__ = ident or aiosmtpd_ident
    protocol.loop = loop
    asyncio.StreamReaderProtocol.__init__(
        protocol,
        asyncio.StreamReader(loop=loop, limit=protocol.line_length_limit),
        client_connected_cb=protocol._cb_client_connected,
        loop=loop,
    )
    protocol.event_handler = handler
    protocol.data_size_limit = data_size_limit
    protocol.enable_SMTPUTF8 = False
    protocol._decode_data = False
    protocol.command_size_limits.clear()
    protocol.hostname = hostname or socket.getfqdn()
    protocol.tls_context = tls_context
    if tls_context:
        if tls_context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
            aiosmtpd_log.warning(
                "tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}; "
                "this might cause client connection problems"
            )
        elif tls_context.check_hostname:
            aiosmtpd_log.warning(
                "tls_context.check_hostname == True; this might cause client connection problems"
            )
    protocol.require_starttls = tls_context and require_starttls
    protocol._timeout_duration = timeout
    protocol._timeout_handle = None
    protocol._tls_handshake_okay = True
    protocol._tls_protocol = None
    protocol._original_transport = None
    protocol.session = None
    protocol.envelope = None
    protocol.transport = None
    protocol._handler_coroutine = None
    if not auth_require_tls and auth_required:
        # aiosmtpd also warns (warnings.warn) of AUTH without TLS, which
        # does not apply to implicit TLS: the whole connection is encrypted.
        aiosmtpd_log.warning("auth_required == True but auth_require_tls == False")
    protocol._auth_require_tls = auth_require_tls
    protocol._proxy_timeout = None
    protocol._auth_callback = login_always_fail  # unused: _authenticate is ours
    protocol._authenticator = None
    protocol._auth_required = auth_required
    protocol._auth_methods = {
        mechanism: _AuthMechAttr(getattr(protocol if builtin else handler, name), builtin)
        for mechanism, name, builtin in found.mechanisms
    }
    if aiosmtpd_log.isEnabledFor(logging.INFO):
        shown = (m + "(builtin)" if builtin else m for m, _, builtin in found.mechanisms)
        aiosmtpd_log.info("Available AUTH mechanisms: " + " ".join(sorted(shown)))
    # aiosmtpd only reads these two (get, in, [], items): a Mapping serves.
    protocol._handle_hooks = Bound(handler, found.hook_names)  # type: ignore[assignment]
    protocol._ehlo_hook_ver = found.ehlo_hook
    protocol._smtp_methods = Bound(protocol, found.command_names)  # type: ignore[assignment]
    protocol._enforce_call_limit = False
