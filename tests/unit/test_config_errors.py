"""Every configuration error the loader can give, with its exact text.

A table of bad configurations, each a small change to a good one, and the
one-line message it must give (« <key path>: <what is wrong> »): operators and
scripts read these, so a rewrite of the loader must keep them byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mss_relay.config import ConfigError, load_config, parse_config
from mss_relay.core.findings import Mode
from mss_relay.core.xdm import XdmSettings

HASH = "scrypt$15$8$1$k/uNk+RFO+Bg2Vuq3yt1pw==$I14WhHUEOSrrsOyFD8D8X4itpl6+8/XsgEpwDmKS4vs="
BAL = "jean.dupont@ch-exemple.mssante.fr"
THROTTLE_KEYS = (
    "auth_failure_delay, auth_lockout, auth_max_delay, auth_max_failures_per_client,"
    " auth_max_failures_per_user, auth_window, max_concurrent_messages, max_connections,"
    " max_connections_per_client, messages_per_minute, recipients_per_hour"
)
ROOT_KEYS = (
    "antivirus, attachments, bals, control, conversations, directory, dkim, hostname, inbound,"
    " inbound_delivery, lifecycle, limits, listeners, log, metrics, state, throttle, timeouts,"
    " tls, trust_space, trusted_clients, upstream, users, workers, xdm"
)
UPSTREAM_KEYS = (
    "ca_file, capture, client_certificate, client_key, host, password_file, pool_idle,"
    " pool_size, port, timeout, tls, username"
)
NOT_A_SIZE = (
    "is not a size (a number of bytes, or a number followed by KB, MB, GB, KiB, MiB or GiB)"
)
NOT_A_DURATION = "is not a duration (a number of seconds, or a number followed by s, m, h or d)"
SIZE_SUCH_AS = "must be a size such as 20MiB, 60MB or a number of bytes"
DURATION_SUCH_AS = "must be a duration such as 30s, 15m, 1h or a number of seconds"
MILTER_TLS = (
    "a milter listener speaks the milter protocol, which has no TLS:"
    " leave tls out (listen on loopback or on a Unix socket: path)"
)
MAPPING = "must be a mapping of keys to values"
CLAMD_FORM = "must be unix:/path/to/clamd.ctl or tcp:host:port"
MAX_SIZE_BELOW = (
    "the largest message limits.max_message_size admits, as sent on the wire (base64 and"
    " headers); raise it (and clamd's StreamMaxLength with it) or lower limits.max_message_size"
)


def good() -> dict[str, Any]:
    """Files named here exist in the test's folder (see `base`)."""
    return {
        "hostname": "relay.ch-exemple.mssante.fr",
        "listeners": [
            {"name": "sub", "role": "submission", "host": "127.0.0.1", "port": 10587},
        ],
        "tls": {"certificate": "relay.pem", "private_key": "relay.key"},
        "upstream": {"host": "127.0.0.1", "port": 10025, "tls": "none"},
        "users": [{"name": "jdupont", "password_hash": HASH}],
        "bals": [{"address": BAL, "type": "nominative", "users": ["jdupont"]}],
    }


Change = Callable[[dict[str, Any]], object]


def put(*keys: str | int, value: object) -> Change:
    """Set a key deep in the configuration (creating sections on the way)."""

    def change(config: dict[str, Any]) -> None:
        node: Any = config
        for key in keys[:-1]:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value

    return change


def drop(*keys: str | int) -> Change:
    def change(config: dict[str, Any]) -> None:
        node: Any = config
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return change


def add(key: str, item: object) -> Change:
    return lambda config: config[key].append(item)


@dataclass(frozen=True)
class Whole:
    """The whole file replaced by this value."""

    value: object


def milter(**keys: object) -> dict[str, object]:
    return {"name": "milter", "role": "milter", **keys}


def both(*changes: Change) -> Change:
    def change(config: dict[str, Any]) -> None:
        for one in changes:
            one(config)

    return change


CASES: list[tuple[str, Change, str]] = [
    # The file as a whole and its top level.
    ("root-list", lambda c: Whole([c]), MAPPING),
    ("root-empty", lambda c: Whole(None), "listeners: is required"),
    (
        "root-unknown",
        put("listner", value=1),
        f"listner: unknown key (expected one of: {ROOT_KEYS})",
    ),
    ("hostname-type", put("hostname", value=5), "hostname: must be a string"),
    ("workers-type", put("workers", value="two"), "workers: must be a whole number"),
    ("workers-bool", put("workers", value=True), "workers: must be a whole number"),
    ("workers-low", put("workers", value=0), "workers: must be between 1 and 64"),
    ("workers-high", put("workers", value=65), "workers: must be between 1 and 64"),
    # antivirus (clamd)
    ("antivirus-type", put("antivirus", value="clamd"), f"antivirus: {MAPPING}"),
    ("antivirus-empty", put("antivirus", value={}), "antivirus.clamd: is required"),
    (
        "antivirus-clamd-kind",
        put("antivirus", value={"clamd": "/run/clamav/clamd.ctl"}),
        f"antivirus.clamd: {CLAMD_FORM}",
    ),
    (
        "antivirus-clamd-unix-empty",
        put("antivirus", value={"clamd": "unix:"}),
        f"antivirus.clamd: {CLAMD_FORM}",
    ),
    (
        "antivirus-clamd-tcp-no-port",
        put("antivirus", value={"clamd": "tcp:127.0.0.1"}),
        f"antivirus.clamd: {CLAMD_FORM}",
    ),
    (
        "antivirus-clamd-tcp-port",
        put("antivirus", value={"clamd": "tcp:127.0.0.1:70000"}),
        "antivirus.clamd: port 70000 is not a TCP port (1-65535)",
    ),
    (
        "antivirus-clamd-tcp-host",
        put("antivirus", value={"clamd": "tcp:clam av:3310"}),
        "antivirus.clamd: 'clam av' is not an IP address or a host name",
    ),
    (
        "antivirus-clamd-number",
        put("antivirus", value={"clamd": 3310}),
        f"antivirus.clamd: {CLAMD_FORM}",
    ),
    (
        "antivirus-timeout",
        put("antivirus", value={"clamd": "tcp:127.0.0.1:3310", "timeout": "soon"}),
        f"antivirus.timeout: 'soon' {NOT_A_DURATION}",
    ),
    (
        "antivirus-timeout-zero",
        put("antivirus", value={"clamd": "tcp:127.0.0.1:3310", "timeout": 0}),
        "antivirus.timeout: must be more than zero",
    ),
    (
        "antivirus-max-size-text",
        put("antivirus", value={"clamd": "tcp:127.0.0.1:3310", "max_size": "100 Mo"}),
        f"antivirus.max_size: '100 Mo' {NOT_A_SIZE}",
    ),
    (
        "antivirus-max-size-over-clamd",
        put("antivirus", value={"clamd": "tcp:127.0.0.1:3310", "max_size": "5GB"}),
        "antivirus.max_size: must be at most 4GB (clamd's StreamMaxLength limit)",
    ),
    (
        # The default limits (60 MiB of content) admit 87142246 bytes on the wire.
        "antivirus-max-size-below-limits",
        put("antivirus", value={"clamd": "unix:/run/clamav/clamd.ctl", "max_size": "80MiB"}),
        f"antivirus.max_size: must be at least 87142246 bytes: {MAX_SIZE_BELOW}",
    ),
    (
        "antivirus-max-size-below-raised-limits",
        both(
            put("limits", "max_message_size", value="100MiB"),
            put("antivirus", value={"clamd": "unix:/run/clamav/clamd.ctl"}),
        ),
        f"antivirus.max_size: must be at least 144538000 bytes: {MAX_SIZE_BELOW}",
    ),
    (
        "antivirus-on-error",
        put("antivirus", value={"clamd": "tcp:127.0.0.1:3310", "on_error": "tempfail"}),
        "antivirus.on_error: must be one of refuse, accept",
    ),
    (
        "antivirus-unknown",
        put("antivirus", value={"clamd": "tcp:127.0.0.1:3310", "socket": "x"}),
        "antivirus.socket: unknown key (expected one of: clamd, max_size, on_error, timeout)",
    ),
    # trust_space (the ANS liste blanche)
    (
        "trust-space-url-http",
        put("trust_space", value={"whitelist": "l.xml", "whitelist_url": "http://x/l.xml"}),
        "trust_space.whitelist_url: must be an https:// URL",
    ),
    (
        "trust-space-url-alone",
        put("trust_space", value={"whitelist_url": "https://x/l.xml"}),
        "trust_space.whitelist: is required with whitelist_url (the file it updates)",
    ),
    (
        "trust-space-refresh",
        put("trust_space", value={"refresh": "tomorrow"}),
        f"trust_space.refresh: 'tomorrow' {NOT_A_DURATION}",
    ),
    (
        "trust-space-ca-missing",
        put("trust_space", value={"whitelist_ca": "nowhere.pem"}),
        "trust_space.whitelist_ca: file not found: {base}/nowhere.pem",
    ),
    (
        "trust-space-ca-directory",
        put("trust_space", value={"whitelist_ca": "."}),
        "trust_space.whitelist_ca: is a directory, not a file: {base}",
    ),
    (
        "trust-space-url-space",
        put("trust_space", value={"whitelist": "l.xml", "whitelist_url": "https://exa mple/l.xml"}),
        "trust_space.whitelist_url: must not contain spaces or control characters",
    ),
    (
        "trust-space-url-bracket",
        put("trust_space", value={"whitelist": "l.xml", "whitelist_url": "https://[::1/x"}),
        "trust_space.whitelist_url: is not a valid URL: Invalid IPv6 URL",
    ),
    (
        "trust-space-url-no-host",
        put("trust_space", value={"whitelist": "l.xml", "whitelist_url": "https:///l.xml"}),
        "trust_space.whitelist_url: must name a host (https://HOST/...)",
    ),
    (
        "trust-space-url-port",
        put("trust_space", value={"whitelist": "l.xml", "whitelist_url": "https://x:99999/"}),
        "trust_space.whitelist_url: is not a valid URL: Port out of range 0-65535",
    ),
    (
        "trust-space-refresh-short",
        put("trust_space", value={"refresh": "0.5s"}),
        "trust_space.refresh: must be at least 1s",
    ),
    (
        "trust-space-unknown",
        put("trust_space", value={"white_list": "l.xml"}),
        "trust_space.white_list: unknown key (expected one of: max_age, refresh, whitelist,"
        " whitelist_ca, whitelist_url)",
    ),
    # metrics
    ("metrics-list", put("metrics", value=[]), f"metrics: {MAPPING}"),
    (
        "metrics-port",
        put("metrics", value={"port": 0}),
        "metrics.port: must be between 1 and 65535",
    ),
    (
        "metrics-port-type",
        put("metrics", value={"port": "9464"}),
        "metrics.port: must be a whole number",
    ),
    (
        "metrics-host-empty",
        put("metrics", value={"host": ""}),
        "metrics.host: must be an IP address or a host name",
    ),
    (
        "metrics-host-words",
        put("metrics", value={"host": "not an ip"}),
        "metrics.host: must be an IP address or a host name",
    ),
    (
        "listener-host-words",
        put("listeners", 0, "host", value="not an ip"),
        "listeners[0].host: must be an IP address or a host name",
    ),
    (
        "metrics-unknown",
        put("metrics", value={"path": "/metrics"}),
        "metrics.path: unknown key (expected one of: host, port)",
    ),
    (
        "metrics-same-endpoint",
        put("metrics", value={"host": "127.0.0.1", "port": 10587}),
        "metrics.port: same endpoint as listeners[0]",
    ),
    # listeners
    ("listeners-missing", drop("listeners"), "listeners: is required"),
    ("listeners-null", put("listeners", value=None), "listeners: is required"),
    ("listeners-mapping", put("listeners", value={}), "listeners: must be a list"),
    ("listeners-empty", put("listeners", value=[]), "listeners: must list at least one listener"),
    ("listener-not-mapping", put("listeners", value=["sub"]), f"listeners[0]: {MAPPING}"),
    ("role-missing", drop("listeners", 0, "role"), "listeners[0].role: is required"),
    ("role-type", put("listeners", 0, "role", value=1), "listeners[0].role: must be a string"),
    ("role-empty", put("listeners", 0, "role", value=" "), "listeners[0].role: must not be empty"),
    (
        "role-choice",
        put("listeners", 0, "role", value="relay"),
        "listeners[0].role: must be one of submission, inbound, milter",
    ),
    ("name-missing", drop("listeners", 0, "name"), "listeners[0].name: is required"),
    ("name-empty", put("listeners", 0, "name", value=""), "listeners[0].name: must not be empty"),
    ("name-type", put("listeners", 0, "name", value=[]), "listeners[0].name: must be a string"),
    ("host-type", put("listeners", 0, "host", value=1), "listeners[0].host: must be a string"),
    ("port-missing", drop("listeners", 0, "port"), "listeners[0].port: is required"),
    (
        "port-type",
        put("listeners", 0, "port", value="smtp"),
        "listeners[0].port: must be a whole number",
    ),
    (
        "port-float",
        put("listeners", 0, "port", value=25.0),
        "listeners[0].port: must be a whole number",
    ),
    (
        "port-low",
        put("listeners", 0, "port", value=0),
        "listeners[0].port: must be between 1 and 65535",
    ),
    (
        "port-high",
        put("listeners", 0, "port", value=65536),
        "listeners[0].port: must be between 1 and 65535",
    ),
    (
        "listener-tls-choice",
        put("listeners", 0, "tls", value="ssl"),
        "listeners[0].tls: must be one of starttls, implicit, none",
    ),
    (
        "listener-tls-none-open",
        both(
            put("listeners", 0, "host", value="0.0.0.0"), put("listeners", 0, "tls", value="none")
        ),
        "listeners[0].tls: none is refused on a non-loopback host (mail and passwords would"
        " cross the network in clear); use starttls or implicit",
    ),
    (
        "listener-unknown",
        put("listeners", 0, "path", value="x.sock"),
        "listeners[0].path: unknown key (expected one of: host, name, port, role, tls)",
    ),
    (
        "listener-duplicate-name",
        add("listeners", {"name": "sub", "role": "submission", "port": 10588}),
        "listeners[1].name: duplicate listener name (already listeners[0])",
    ),
    (
        "listener-duplicate-endpoint",
        add("listeners", {"name": "sub2", "role": "submission", "port": 10587}),
        "listeners[1].port: same endpoint as listeners[0]",
    ),
    (
        "listener-tls-needs-section",
        drop("tls"),
        "listeners[0].tls: starttls needs a top-level tls section",
    ),
    (
        "listener-implicit-needs-section",
        both(drop("tls"), put("listeners", 0, "tls", value="implicit")),
        "listeners[0].tls: implicit needs a top-level tls section",
    ),
    (
        "inbound-needs-delivery",
        add("listeners", {"name": "in", "role": "inbound", "port": 10026}),
        "listeners[1].role: inbound needs a top-level inbound_delivery section",
    ),
    # milter listeners
    (
        "milter-tls",
        add("listeners", milter(port=8890, tls="starttls")),
        f"listeners[1].tls: {MILTER_TLS}",
    ),
    (
        "milter-tls-other",
        add("listeners", milter(port=8890, tls="ssl")),
        f"listeners[1].tls: {MILTER_TLS}",
    ),
    (
        "milter-tls-type",
        add("listeners", milter(port=8890, tls=1)),
        "listeners[1].tls: must be a string",
    ),
    (
        "milter-path-and-port",
        add("listeners", milter(port=8890, path="milter.sock")),
        "listeners[1].port: give either path (a Unix socket) or host and port",
    ),
    (
        "milter-path-and-host",
        add("listeners", milter(host="127.0.0.1", path="milter.sock")),
        "listeners[1].host: unknown key (expected one of: name, path, role, tls)",
    ),
    ("milter-port-missing", add("listeners", milter()), "listeners[1].port: is required"),
    ("milter-path-type", add("listeners", milter(path=5)), "listeners[1].path: must be a string"),
    (
        "milter-port-range",
        add("listeners", milter(port=70000)),
        "listeners[1].port: must be between 1 and 65535",
    ),
    (
        "milter-unknown",
        add("listeners", milter(port=8890, role_="x")),
        "listeners[1].role_: unknown key (expected one of: host, name, path, port, role, tls)",
    ),
    (
        "milter-same-path",
        both(
            add("listeners", milter(path="m.sock")),
            add("listeners", milter(name="m2", path="m.sock")),
        ),
        "listeners[2].path: same endpoint as listeners[1]",
    ),
    (
        "milter-same-port",
        add("listeners", milter(port=10587)),
        "listeners[1].port: same endpoint as listeners[0]",
    ),
    # tls
    ("tls-type", put("tls", value="yes"), f"tls: {MAPPING}"),
    ("tls-list", put("tls", value=[]), f"tls: {MAPPING}"),
    ("tls-cert-missing", drop("tls", "certificate"), "tls.certificate: is required"),
    ("tls-cert-empty", put("tls", "certificate", value=" "), "tls.certificate: must not be empty"),
    ("tls-key-missing", drop("tls", "private_key"), "tls.private_key: is required"),
    ("tls-cert-type", put("tls", "certificate", value=1), "tls.certificate: must be a string"),
    (
        "tls-cert-absent",
        put("tls", "certificate", value="none.pem"),
        "tls.certificate: file not found: {base}/none.pem",
    ),
    (
        "tls-key-absent",
        put("tls", "private_key", value="sub/none.key"),
        "tls.private_key: file not found: {base}/sub/none.key",
    ),
    (
        "tls-self-signed-type",
        put("tls", "self_signed", value="yes"),
        "tls.self_signed: must be true or false",
    ),
    (
        "tls-unknown",
        put("tls", "ca_file", value="x"),
        "tls.ca_file: unknown key (expected one of: certificate, client_ca, private_key,"
        " self_signed, verify_client)",
    ),
    # tls.client_ca, tls.verify_client, inbound.require_operator_certificate (issue 16)
    (
        "tls-verify-client-enum",
        put("tls", "verify_client", value="always"),
        "tls.verify_client: must be one of required, optional, none",
    ),
    (
        "tls-verify-client-without-ca",
        put("tls", "verify_client", value="optional"),
        "tls.client_ca: is required with verify_client: optional (the CAs a client"
        " certificate must chain to)",
    ),
    (
        "tls-client-ca-missing",
        put("tls", "client_ca", value="igc-sante.pem"),
        "tls.client_ca: file not found: {base}/igc-sante.pem",
    ),
    (
        "operator-certificate-without-whitelist",
        put("inbound", "require_operator_certificate", value=True),
        "inbound.require_operator_certificate: needs trust_space.whitelist (the operators'"
        " certificate DNs are listed there)",
    ),
    (
        "operator-certificate-without-verify-client",
        both(
            put("inbound", "require_operator_certificate", value=True),
            put("trust_space", "whitelist", value="l.xml"),
        ),
        "inbound.require_operator_certificate: needs tls.verify_client: required or optional"
        " (and tls.client_ca): no client certificate is asked for otherwise",
    ),
    (
        "operator-certificate-inbound-without-tls",
        both(
            put("inbound", "require_operator_certificate", value=True),
            put("trust_space", "whitelist", value="l.xml"),
            put("tls", "verify_client", value="required"),
            put("tls", "client_ca", value="relay.pem"),
            put("inbound_delivery", value={"host": "mx"}),
            add("listeners", {"name": "in", "role": "inbound", "port": 10026, "tls": "none"}),
        ),
        "listeners[1].tls: none: inbound.require_operator_certificate needs TLS on inbound"
        " listeners (the certificate comes with it)",
    ),
    (
        "operator-certificate-milter",
        both(
            put("inbound", "require_operator_certificate", value=True),
            put("trust_space", "whitelist", value="l.xml"),
            put("tls", "verify_client", value="required"),
            put("tls", "client_ca", value="relay.pem"),
            add("listeners", milter(port=10028)),
        ),
        "listeners[1].role: milter: inbound.require_operator_certificate cannot be checked"
        " through the milter (Postfix passes the certificate's CN only, as {{cert_subject}}):"
        " check it in Postfix (smtpd_tls_ask_ccert, check_ccert_access)",
    ),
    # upstream and inbound_delivery
    ("upstream-missing", drop("upstream"), "upstream: is required"),
    ("upstream-null", put("upstream", value=None), "upstream: is required"),
    ("upstream-list", put("upstream", value=[]), f"upstream: {MAPPING}"),
    ("upstream-host-missing", drop("upstream", "host"), "upstream.host: is required"),
    ("upstream-host-empty", put("upstream", "host", value=""), "upstream.host: must not be empty"),
    ("upstream-host-type", put("upstream", "host", value=1), "upstream.host: must be a string"),
    (
        "upstream-tls",
        put("upstream", "tls", value="ssl"),
        "upstream.tls: must be one of none, starttls, implicit",
    ),
    (
        "upstream-port",
        put("upstream", "port", value=0),
        "upstream.port: must be between 1 and 65535",
    ),
    (
        "upstream-port-type",
        put("upstream", "port", value="25"),
        "upstream.port: must be a whole number",
    ),
    (
        "upstream-ca-absent",
        put("upstream", "ca_file", value="ca.pem"),
        "upstream.ca_file: file not found: {base}/ca.pem",
    ),
    (
        "upstream-client-cert-absent",
        put("upstream", "client_certificate", value="c.pem"),
        "upstream.client_certificate: file not found: {base}/c.pem",
    ),
    (
        "upstream-client-key-absent",
        put("upstream", "client_key", value="c.key"),
        "upstream.client_key: file not found: {base}/c.key",
    ),
    (
        "upstream-password-file-absent",
        put("upstream", "password_file", value="pw"),
        "upstream.password_file: file not found: {base}/pw",
    ),
    (
        "upstream-cert-without-key",
        put("upstream", "client_certificate", value="relay.pem"),
        "upstream.client_key: client_certificate and client_key go together",
    ),
    (
        "upstream-key-without-cert",
        put("upstream", "client_key", value="relay.key"),
        "upstream.client_key: client_certificate and client_key go together",
    ),
    (
        "upstream-username-alone",
        put("upstream", "username", value="relay"),
        "upstream.password_file: username and password_file go together",
    ),
    (
        "upstream-password-alone",
        put("upstream", "password_file", value="relay.key"),
        "upstream.password_file: username and password_file go together",
    ),
    (
        "upstream-username-type",
        put("upstream", "username", value=1),
        "upstream.username: must be a string",
    ),
    (
        "upstream-timeout-zero",
        put("upstream", "timeout", value=0),
        "upstream.timeout: must be a positive number",
    ),
    (
        "upstream-timeout-text",
        put("upstream", "timeout", value="5s"),
        "upstream.timeout: must be a positive number",
    ),
    (
        "upstream-timeout-bool",
        put("upstream", "timeout", value=True),
        "upstream.timeout: must be a positive number",
    ),
    (
        "upstream-pool-size",
        put("upstream", "pool_size", value=-1),
        "upstream.pool_size: must be between 0 and 1000",
    ),
    (
        "upstream-pool-idle",
        put("upstream", "pool_idle", value="soon"),
        f"upstream.pool_idle: 'soon' {NOT_A_DURATION}",
    ),
    (
        "upstream-pool-idle-zero",
        put("upstream", "pool_idle", value=0),
        "upstream.pool_idle: must be more than zero",
    ),
    (
        "upstream-capture-type",
        put("upstream", "capture", value=1),
        "upstream.capture: must be a string",
    ),
    (
        "upstream-unknown",
        put("upstream", "hots", value="x"),
        f"upstream.hots: unknown key (expected one of: {UPSTREAM_KEYS})",
    ),
    (
        "inbound-delivery-host",
        put("inbound_delivery", value={"port": 25}),
        "inbound_delivery.host: is required",
    ),
    (
        "inbound-delivery-username",
        put("inbound_delivery", value={"host": "mx", "username": "u"}),
        "inbound_delivery.password_file: username and password_file go together",
    ),
    (
        "inbound-delivery-unknown",
        put("inbound_delivery", value={"host": "mx", "x": 1}),
        f"inbound_delivery.x: unknown key (expected one of: {UPSTREAM_KEYS})",
    ),
    # state
    ("state-type", put("state", value="db"), f"state: {MAPPING}"),
    ("state-database-type", put("state", "database", value=1), "state.database: must be a string"),
    (
        "state-record-timeout-high",
        put("state", "record_timeout", value=61),
        "state.record_timeout: must be at most 60 seconds (a client waits that long)",
    ),
    (
        "state-record-timeout-zero",
        put("state", "record_timeout", value="0s"),
        "state.record_timeout: must be more than zero",
    ),
    (
        "state-record-timeout-negative",
        put("state", "record_timeout", value=-1),
        "state.record_timeout: must not be negative",
    ),
    (
        "state-record-timeout-type",
        put("state", "record_timeout", value=[]),
        f"state.record_timeout: {DURATION_SUCH_AS}",
    ),
    (
        "state-password-file-sqlite",
        put("state", value={"database": "s.db", "password_file": "relay.key"}),
        "state.password_file: is for a postgresql:// database only",
    ),
    (
        "state-database-scheme",
        put("state", "database", value="mysql://u@h/db"),
        "state.database: mysql:// is not a database this relay knows:"
        " a SQLite file path or a postgresql:// URL",
    ),
    (
        "state-database-sslmode",
        put("state", "database", value="postgresql://u@h/db?sslmode=maybe"),
        "state.database: sslmode=maybe is not one of"
        " disable, allow, prefer, require, verify-ca, verify-full",
    ),
    (
        "state-database-no-name",
        put("state", "database", value="postgresql://u@h:5432"),
        "state.database: names no database: postgresql://USER@HOST:PORT/DATABASE",
    ),
    (
        "state-database-port",
        put("state", "database", value="postgresql://u@h:nope/db"),
        "state.database: port nope is not a TCP port (1-65535)",
    ),
    (
        "state-pool-size",
        put("state", value={"database": "postgresql://u@h/db", "pool_size": 0}),
        "state.pool_size: must be between 1 and 100",
    ),
    (
        "state-password-file-missing",
        put("state", value={"database": "postgresql://u@h/db", "password_file": "nope"}),
        "state.password_file: file not found: {base}/nope",
    ),
    (
        "state-connect-timeout",
        put("state", value={"database": "postgresql://u@h/db", "connect_timeout": "0s"}),
        "state.connect_timeout: must be more than zero",
    ),
    (
        "state-unknown",
        put("state", "path", value="x"),
        "state.path: unknown key (expected one of: connect_timeout, database, directory,"
        " password_file, pool_size, record_timeout)",
    ),
    # control
    ("control-type", put("control", value="x"), f"control: {MAPPING}"),
    ("control-socket-type", put("control", "socket", value=1), "control.socket: must be a string"),
    (
        "control-unknown",
        put("control", "path", value="x"),
        "control.path: unknown key (expected one of: socket)",
    ),
    # log
    ("log-type", put("log", value=[]), f"log: {MAPPING}"),
    ("log-file-type", put("log", "file", value=1), "log.file: must be a string"),
    (
        "log-required-type",
        put("log", "required", value="yes"),
        "log.required: must be true or false",
    ),
    (
        "log-pseudonymize-type",
        put("log", "pseudonymize_patients", value="yes"),
        "log.pseudonymize_patients: must be true or false",
    ),
    (
        "log-pseudonym-key-type",
        put("log", "pseudonym_key_file", value=1),
        "log.pseudonym_key_file: must be a string",
    ),
    (
        "log-unknown",
        put("log", "level", value="x"),
        "log.level: unknown key (expected one of: file, pseudonym_key_file,"
        " pseudonymize_patients, required, retention_days, rotate)",
    ),
    (
        "log-retention-low",
        put("log", "retention_days", value=0),
        "log.retention_days: must be between 1 and 36500",
    ),
    (
        "log-retention-type",
        put("log", "retention_days", value="six months"),
        "log.retention_days: must be a whole number",
    ),
    (
        "log-rotate-value",
        put("log", "rotate", value="weekly"),
        "log.rotate: must be one of daily, external",
    ),
    (
        "log-rotate-daily-stdout",
        put("log", value={"file": "-", "rotate": "daily"}),
        "log.rotate: daily needs log.file (a directory for the daily files)",
    ),
    # lifecycle
    (
        "lifecycle-notify-type",
        put("lifecycle", "notify", value="yes"),
        "lifecycle.notify: must be true or false",
    ),
    (
        "lifecycle-notify-from-missing",
        put("lifecycle", "notify", value=True),
        "lifecycle.notify_from: is required when notify is true",
    ),
    (
        "lifecycle-notify-from-not-a-bal",
        put("lifecycle", "notify_from", value="no_reply@ch-exemple.mssante.fr"),
        "lifecycle.notify_from: 'no_reply@ch-exemple.mssante.fr' is not one of the BALs (bals)",
    ),
    (
        "lifecycle-notify-without-upstream",
        both(
            put("lifecycle", value={"notify": True, "notify_from": BAL}),
            put("listeners", 0, value=milter(host="127.0.0.1", port=10025)),
            drop("upstream"),
        ),
        "lifecycle.notify: needs an upstream section (notices are sent through it)",
    ),
    (
        "lifecycle-check-interval",
        put("lifecycle", "check_interval", value="soon"),
        f"lifecycle.check_interval: 'soon' {NOT_A_DURATION}",
    ),
    (
        "lifecycle-unknown",
        put("lifecycle", "notice", value=True),
        "lifecycle.notice: unknown key (expected one of: check_interval, notify, notify_from)",
    ),
    # conversations
    (
        "close-after-days",
        put("conversations", "close_after_days", value=0),
        "conversations.close_after_days: must be between 1 and 3650",
    ),
    (
        "close-after-days-type",
        put("conversations", "close_after_days", value="1d"),
        "conversations.close_after_days: must be a whole number",
    ),
    (
        "retention-days",
        put("conversations", "retention_days", value=36501),
        "conversations.retention_days: must be between 1 and 36500",
    ),
    (
        "purge-interval",
        put("conversations", "purge_interval", value=-5),
        "conversations.purge_interval: must be a positive number",
    ),
    (
        "conversations-unknown",
        put("conversations", "close", value=1),
        "conversations.close: unknown key (expected one of: close_after_days, purge_interval,"
        " retention_days)",
    ),
    # limits
    ("limits-type", put("limits", value=5), f"limits: {MAPPING}"),
    (
        "limits-attachment-text",
        put("limits", "max_attachment_size", value="20 Mo"),
        f"limits.max_attachment_size: '20 Mo' {NOT_A_SIZE}",
    ),
    (
        "limits-message-negative",
        put("limits", "max_message_size", value=-1),
        "limits.max_message_size: must not be negative",
    ),
    (
        "limits-message-bool",
        put("limits", "max_message_size", value=True),
        f"limits.max_message_size: {SIZE_SUCH_AS}",
    ),
    (
        "limits-message-list",
        put("limits", "max_message_size", value=[1]),
        f"limits.max_message_size: {SIZE_SUCH_AS}",
    ),
    (
        "limits-recipients",
        put("limits", "max_recipients", value=0),
        "limits.max_recipients: must be between 1 and 100000",
    ),
    (
        "limits-attachment-over-message",
        put("limits", "max_message_size", value="10MB"),
        "limits.max_attachment_size: must not exceed limits.max_message_size",
    ),
    (
        "limits-per-domain-type",
        put("limits", "per_domain", value=["a.fr"]),
        "limits.per_domain: must map domains to sizes",
    ),
    (
        "limits-per-domain-name",
        put("limits", "per_domain", value={"localhost": 5}),
        "limits.per_domain.localhost: must be a domain name",
    ),
    (
        "limits-per-domain-number",
        put("limits", "per_domain", value={5: 5}),
        "limits.per_domain.5: must be a domain name",
    ),
    (
        "limits-per-domain-size",
        put("limits", "per_domain", value={"a.fr": "big"}),
        f"limits.per_domain.a.fr: 'big' {NOT_A_SIZE}",
    ),
    (
        "limits-unknown",
        put("limits", "max_size", value=1),
        "limits.max_size: unknown key (expected one of: max_attachment_size, max_message_size,"
        " max_recipients, per_domain)",
    ),
    # users
    ("users-type", put("users", value={"jdupont": HASH}), "users: must be a list"),
    ("user-not-mapping", put("users", value=["jdupont"]), f"users[0]: {MAPPING}"),
    ("user-name-missing", drop("users", 0, "name"), "users[0].name: is required"),
    ("user-name-empty", put("users", 0, "name", value=""), "users[0].name: must not be empty"),
    ("user-hash-missing", drop("users", 0, "password_hash"), "users[0].password_hash: is required"),
    (
        "user-hash-type",
        put("users", 0, "password_hash", value=5),
        "users[0].password_hash: must be a string",
    ),
    (
        "user-hash-plain",
        put("users", 0, "password_hash", value="secret"),
        "users[0].password_hash: not a hash made by « mss-relay hash-password »",
    ),
    (
        "user-duplicate",
        add("users", {"name": "jdupont", "password_hash": HASH}),
        "users[1].name: duplicate user 'jdupont'",
    ),
    (
        "user-unknown",
        put("users", 0, "password", value="x"),
        "users[0].password: unknown key (expected one of: name, password_hash)",
    ),
    # bals
    ("bals-type", put("bals", value={}), "bals: must be a list"),
    ("bal-not-mapping", put("bals", value=[BAL]), f"bals[0]: {MAPPING}"),
    ("bal-address-missing", drop("bals", 0, "address"), "bals[0].address: is required"),
    ("bal-type-missing", drop("bals", 0, "type"), "bals[0].type: is required"),
    (
        "bal-type-choice",
        put("bals", 0, "type", value="personnelle"),
        "bals[0].type: must be one of nominative, organisationnelle, applicative",
    ),
    ("bal-type-type", put("bals", 0, "type", value=1), "bals[0].type: must be a string"),
    (
        "bal-address-not-mssante",
        put("bals", 0, "address", value="jean@gmail.com"),
        "bals[0].address: jean@gmail.com is not an MSSanté address (*.mssante.fr)",
    ),
    (
        # Without a liste blanche, the trust space is still « ends in mssante.fr ».
        "bal-address-apicrypt-without-whitelist",
        put("bals", 0, "address", value="jean@mssante.apicrypt.org"),
        "bals[0].address: jean@mssante.apicrypt.org is not an MSSanté address (*.mssante.fr)",
    ),
    (
        # With one, any domain may be configured (unlisted: a warning at
        # start), but it must still be a domain name.
        "bal-address-whitelist-not-a-domain",
        both(
            put("trust_space", value={"whitelist": "l.xml"}),
            put("bals", 0, "address", value="jean@localhost"),
        ),
        "bals[0].address: 'jean@localhost' is not an e-mail address",
    ),
    (
        "bal-address-whitelist-empty-label",
        both(
            put("trust_space", value={"whitelist": "l.xml"}),
            put("bals", 0, "address", value="jean@mssante..apicrypt.org"),
        ),
        "bals[0].address: 'jean@mssante..apicrypt.org' is not an e-mail address",
    ),
    (
        "bal-address-not-address",
        put("bals", 0, "address", value="jean.dupont"),
        "bals[0].address: 'jean.dupont' is not an e-mail address",
    ),
    (
        "bal-address-space",
        put("bals", 0, "address", value="jean dupont@ch-exemple.mssante.fr"),
        "bals[0].address: 'jean dupont@ch-exemple.mssante.fr' is not an e-mail address",
    ),
    (
        "bal-duplicate",
        add("bals", {"address": " Jean.Dupont@CH-EXEMPLE.mssante.fr", "type": "nominative"}),
        "bals[1].address: duplicate BAL Jean.Dupont@CH-EXEMPLE.mssante.fr (already bals[0])",
    ),
    (
        "bal-users-text",
        put("bals", 0, "users", value="jdupont"),
        "bals[0].users: must be a list of user names",
    ),
    (
        "bal-users-numbers",
        put("bals", 0, "users", value=[1]),
        "bals[0].users: must be a list of user names",
    ),
    (
        "bal-may-initiate-type",
        put("bals", 0, "patients_may_initiate", value="yes"),
        "bals[0].patients_may_initiate: must be true or false",
    ),
    (
        "bal-auto-close-type",
        put("bals", 0, "auto_close", value=1),
        "bals[0].auto_close: must be true or false",
    ),
    (
        "bal-unknown",
        put("bals", 0, "user", value="x"),
        "bals[0].user: unknown key (expected one of: address, auto_close, patients_may_initiate,"
        " type, users)",
    ),
    # dkim
    ("dkim-type", put("dkim", value={}), "dkim: must be a list"),
    ("dkim-item-type", put("dkim", value=["key"]), f"dkim[0]: {MAPPING}"),
    (
        "dkim-domain-missing",
        put("dkim", value=[{"selector": "s", "private_key": "k"}]),
        "dkim[0].domain: is required",
    ),
    (
        "dkim-selector-missing",
        put("dkim", value=[{"domain": "ch-exemple.mssante.fr", "private_key": "k"}]),
        "dkim[0].selector: is required",
    ),
    (
        "dkim-key-missing",
        put("dkim", value=[{"domain": "ch-exemple.mssante.fr", "selector": "s"}]),
        "dkim[0].private_key: is required",
    ),
    (
        "dkim-algorithm",
        put(
            "dkim",
            value=[{"domain": "x.fr", "selector": "s", "private_key": "k", "algorithm": "dsa"}],
        ),
        "dkim[0].algorithm: must be one of rsa-sha256, ed25519-sha256",
    ),
    (
        "dkim-generate-type",
        put("dkim", value=[{"domain": "x.fr", "selector": "s", "private_key": "k", "generate": 1}]),
        "dkim[0].generate: must be true or false",
    ),
    (
        "dkim-domain-name",
        put("dkim", value=[{"domain": "LocalHost", "selector": "s", "private_key": "k"}]),
        "dkim[0].domain: 'localhost' is not a domain name",
    ),
    (
        "dkim-domain-empty-label",
        put("dkim", value=[{"domain": "a..fr", "selector": "s", "private_key": "k"}]),
        "dkim[0].domain: 'a..fr' is not a domain name",
    ),
    (
        "dkim-selector",
        put("dkim", value=[{"domain": "x.fr", "selector": "my key", "private_key": "k"}]),
        "dkim[0].selector: 'my key' is not a DKIM selector",
    ),
    (
        "dkim-duplicate",
        put(
            "dkim",
            value=[
                {"domain": "x.fr", "selector": "s", "private_key": "k"},
                {"domain": "X.fr.", "selector": " s ", "private_key": "k2"},
            ],
        ),
        "dkim[1].selector: same domain and selector as dkim[0]",
    ),
    (
        "dkim-unknown",
        put("dkim", value=[{"domain": "x.fr", "selector": "s", "private_key": "k", "key": 1}]),
        "dkim[0].key: unknown key (expected one of: algorithm, domain, generate, private_key,"
        " selector)",
    ),
    # inbound
    ("inbound-type", put("inbound", value=True), f"inbound: {MAPPING}"),
    (
        "inbound-require-type",
        put("inbound", "require_dkim_for_patients", value="yes"),
        "inbound.require_dkim_for_patients: must be true or false",
    ),
    (
        "inbound-dns-file",
        put("inbound", "dkim_dns_file", value="dns.yaml"),
        "inbound.dkim_dns_file: file not found: {base}/dns.yaml",
    ),
    (
        "inbound-dns-timeout",
        put("inbound", "dns_timeout", value=0),
        "inbound.dns_timeout: must be a positive number",
    ),
    (
        "inbound-unknown",
        put("inbound", "dns", value=1),
        "inbound.dns: unknown key (expected one of: dkim_dns_file, dns_timeout,"
        " require_dkim_for_patients, require_operator_certificate)",
    ),
    # throttle
    ("throttle-type", put("throttle", value=[]), f"throttle: {MAPPING}"),
    (
        "throttle-user-failures",
        put("throttle", "auth_max_failures_per_user", value=0),
        "throttle.auth_max_failures_per_user: must be between 1 and 10000",
    ),
    (
        "throttle-client-failures",
        put("throttle", "auth_max_failures_per_client", value=100_001),
        "throttle.auth_max_failures_per_client: must be between 1 and 100000",
    ),
    (
        "throttle-window",
        put("throttle", "auth_window", value=0),
        "throttle.auth_window: must be more than zero",
    ),
    (
        "throttle-lockout",
        put("throttle", "auth_lockout", value="15 minutes"),
        f"throttle.auth_lockout: '15 minutes' {NOT_A_DURATION}",
    ),
    (
        "throttle-failure-delay",
        put("throttle", "auth_failure_delay", value=-1),
        "throttle.auth_failure_delay: must not be negative",
    ),
    (
        "throttle-max-delay",
        put("throttle", "auth_max_delay", value=False),
        f"throttle.auth_max_delay: {DURATION_SUCH_AS}",
    ),
    (
        "throttle-messages",
        put("throttle", "messages_per_minute", value=-1),
        "throttle.messages_per_minute: must be between 0 and 1000000",
    ),
    (
        "throttle-recipients",
        put("throttle", "recipients_per_hour", value=10**7 + 1),
        "throttle.recipients_per_hour: must be between 0 and 10000000",
    ),
    (
        "throttle-connections",
        put("throttle", "max_connections", value=0),
        "throttle.max_connections: must be between 1 and 100000",
    ),
    (
        "throttle-connections-per-client",
        put("throttle", "max_connections_per_client", value="5"),
        "throttle.max_connections_per_client: must be a whole number",
    ),
    (
        "throttle-concurrent",
        put("throttle", "max_concurrent_messages", value=10_001),
        "throttle.max_concurrent_messages: must be between 1 and 10000",
    ),
    (
        "throttle-unknown",
        put("throttle", "messages_per_min", value=5),
        f"throttle.messages_per_min: unknown key (expected one of: {THROTTLE_KEYS})",
    ),
    # attachments
    ("attachments-type", put("attachments", value="exe"), f"attachments: {MAPPING}"),
    (
        "attachments-extensions",
        put("attachments", "refused_extensions", value="exe"),
        "attachments.refused_extensions: must be a list of names",
    ),
    (
        "attachments-also-extensions",
        put("attachments", "also_refused_extensions", value=[" "]),
        "attachments.also_refused_extensions: must be a list of names",
    ),
    (
        "attachments-types",
        put("attachments", "refused_content_types", value=[1]),
        "attachments.refused_content_types: must be a list of names",
    ),
    (
        "attachments-also-types",
        put("attachments", "also_refused_content_types", value={"a": 1}),
        "attachments.also_refused_content_types: must be a list of names",
    ),
    (
        "attachments-inspect",
        put("attachments", "inspect_archives", value="no"),
        "attachments.inspect_archives: must be true or false",
    ),
    (
        "attachments-unknown",
        put("attachments", "extensions", value=[]),
        "attachments.extensions: unknown key (expected one of: also_refused_content_types,"
        " also_refused_extensions, inspect_archives, refused_content_types, refused_extensions)",
    ),
    # trusted_clients
    (
        "trusted-type",
        put("trusted_clients", value=["10.0.0.1"]),
        "trusted_clients: must map client addresses to user names",
    ),
    (
        "trusted-address",
        put("trusted_clients", value={"10.0.0.300": "jdupont"}),
        "trusted_clients.10.0.0.300: '10.0.0.300' is not an IP address",
    ),
    (
        "trusted-user",
        put("trusted_clients", value={"10.0.0.12": "dpi"}),
        "trusted_clients.10.0.0.12: 'dpi' is not one of the users",
    ),
    (
        "trusted-user-type",
        put("trusted_clients", value={"::1": 5}),
        "trusted_clients.::1: 5 is not one of the users",
    ),
    # timeouts
    ("timeouts-type", put("timeouts", value=300), f"timeouts: {MAPPING}"),
    ("timeouts-idle", put("timeouts", "idle", value=0), "timeouts.idle: must be more than zero"),
    (
        "timeouts-data",
        put("timeouts", "data", value="long"),
        f"timeouts.data: 'long' {NOT_A_DURATION}",
    ),
    (
        "timeouts-busy-wait",
        put("timeouts", "busy_wait", value="0m"),
        "timeouts.busy_wait: must be more than zero",
    ),
    (
        "timeouts-min-rate",
        put("timeouts", "min_data_rate", value="1 Ko"),
        f"timeouts.min_data_rate: '1 Ko' {NOT_A_SIZE}",
    ),
    (
        "timeouts-grace",
        put("timeouts", "data_rate_grace", value=-1),
        "timeouts.data_rate_grace: must not be negative",
    ),
    (
        "timeouts-unknown",
        put("timeouts", "dat", value=1),
        "timeouts.dat: unknown key (expected one of: busy_wait, data, data_rate_grace, idle,"
        " min_data_rate, shutdown)",
    ),
    (
        "timeouts-shutdown",
        put("timeouts", "shutdown", value="soon"),
        f"timeouts.shutdown: 'soon' {NOT_A_DURATION}",
    ),
    (
        "timeouts-shutdown-zero",
        put("timeouts", "shutdown", value=0),
        "timeouts.shutdown: must be more than zero",
    ),
    # directory (the Annuaire Santé)
    ("directory-list", put("directory", value=[]), f"directory: {MAPPING}"),
    (
        "directory-mode",
        put("directory", "mode", value="strict"),
        "directory.mode: must be one of off, warn, refuse",
    ),
    (
        "directory-mode-true",
        put("directory", "mode", value=True),
        "directory.mode: must be one of off, warn, refuse",
    ),
    (
        "directory-also-accept",
        put("directory", "also_accept", value="ch-exemple.mssante.fr"),
        "directory.also_accept: must be a list of addresses or domains",
    ),
    (
        "directory-also-accept-empty",
        put("directory", "also_accept", value=["", "x.fr"]),
        "directory.also_accept: must be a list of addresses or domains",
    ),
    (
        "directory-also-accept-not-an-address",
        put("directory", "also_accept", value=["x.fr", "not an address@@"]),
        "directory.also_accept: 'not an address@@' is neither an address nor a domain",
    ),
    (
        "directory-also-accept-one-label",
        put("directory", "also_accept", value=["localhost"]),
        "directory.also_accept: 'localhost' is neither an address nor a domain",
    ),
    (
        "directory-unknown",
        put("directory", "mod", value="warn"),
        "directory.mod: unknown key (expected one of: also_accept, mode)",
    ),
    # xdm (IHE-XDM packages, the X-MSS fields)
    ("xdm-type", put("xdm", value="refuse"), f"xdm: {MAPPING}"),
    ("xdm-mode", put("xdm", "mode", value="strict"), "xdm.mode: must be one of refuse, warn, off"),
    ("xdm-mode-true", put("xdm", "mode", value=True), "xdm.mode: must be one of refuse, warn, off"),
    ("xdm-mode-number", put("xdm", "mode", value=1), "xdm.mode: must be one of refuse, warn, off"),
    (
        "xdm-allow-test-identities",
        put("xdm", "allow_test_identities", value="yes"),
        "xdm.allow_test_identities: must be true or false",
    ),
    (
        "xdm-unknown",
        put("xdm", "allow_test", value=True),
        "xdm.allow_test: unknown key (expected one of: allow_test_identities, mode)",
    ),
]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    for name in ("relay.pem", "relay.key"):
        (tmp_path / name).write_text("not read by the loader\n")
    return tmp_path


@pytest.mark.parametrize(("change", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_bad_configuration_gives_its_exact_message(
    base: Path, change: Change, message: str
) -> None:
    config = good()
    whole = change(config)
    data = whole.value if isinstance(whole, Whole) else config
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base / "relay.yaml")
    assert str(caught.value) == message.format(base=base)


def test_file_level_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    with pytest.raises(ConfigError, match=r"^") as caught:
        load_config(missing)
    assert str(caught.value) == f"{missing}: no such configuration file"
    (tmp_path / "latin1.yaml").write_bytes(b"hostname: h\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "latin1.yaml")
    assert str(caught.value).startswith(f"{tmp_path}/latin1.yaml: cannot read: 'utf-8' codec")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value) == f"{tmp_path}: cannot read: [Errno 21] Is a directory: '{tmp_path}'"
    (tmp_path / "broken.yaml").write_text("listeners: [\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "broken.yaml")
    assert str(caught.value).startswith(f"{tmp_path}/broken.yaml: not valid YAML: ")
    # One line, as every configuration error (PyYAML's own text spans several).
    (tmp_path / "unclosed.yaml").write_text("hostname: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "unclosed.yaml")
    assert str(caught.value) == (
        f"{tmp_path}/unclosed.yaml: not valid YAML: expected ',' or ']', but got"
        " '<stream end>' (line 2, column 1)"
    )


def test_with_a_whitelist_a_bal_may_be_outside_mssante_fr(base: Path) -> None:
    """Issue 16: the trust space is the liste blanche, which lists domains
    such as mssante.apicrypt.org; whether it lists the BAL's is said at start."""
    config = good()
    config["trust_space"] = {"whitelist": "l.xml"}
    config["bals"][0]["address"] = "Jean@MSSANTE.apicrypt.org."
    config["bals"].append({"address": "accueil@gmail.com", "type": "organisationnelle"})
    loaded = parse_config(config, base / "relay.yaml")
    assert [b.address for b in loaded.bals] == ["Jean@MSSANTE.apicrypt.org.", "accueil@gmail.com"]
    assert loaded.warnings == ()


def test_warnings_are_exact(base: Path) -> None:
    config = good()
    config["bals"].append({"address": "accueil@ch-autre.mssante.fr", "type": "organisationnelle"})
    config["bals"][0]["users"] = ["jdupont", "secretariat"]
    config["listeners"].append(milter(host="10.0.0.1", port=8890))
    config["dkim"] = [{"domain": "ch-exemple.mssante.fr", "selector": "s", "private_key": "k"}]
    assert parse_config(config, base / "relay.yaml").warnings == (
        "listeners[1]: the milter protocol is not encrypted; 10.0.0.1 is not loopback:"
        " make sure only the Postfix host can reach it",
        "bals[0].users: user 'secretariat' is not in users",
        "bals: accueil@ch-autre.mssante.fr has no DKIM key (dkim): sent unsigned",
    )


def test_the_antivirus_section_as_loaded(base: Path) -> None:
    """The contract of issue 19: both kinds of clamd socket, the defaults
    (30 s, 100 MiB, refuse), a relative socket path from the file's folder."""
    config = good()
    assert parse_config(config, base / "relay.yaml").antivirus is None
    config["antivirus"] = {"clamd": "unix:/run/clamav/clamd.ctl"}
    loaded = parse_config(config, base / "relay.yaml").antivirus
    assert loaded is not None
    assert (str(loaded.clamd), loaded.timeout, loaded.max_size) == (
        "unix:/run/clamav/clamd.ctl",
        30.0,
        100 * 1024**2,
    )
    assert not loaded.accepts_unscanned
    config["antivirus"] = {"clamd": "unix:run/clamd.ctl", "timeout": "2m", "on_error": "accept"}
    loaded = parse_config(config, base / "relay.yaml").antivirus
    assert loaded is not None
    assert (loaded.clamd.path, loaded.timeout, loaded.accepts_unscanned) == (
        base.resolve() / "run" / "clamd.ctl",
        120.0,
        True,
    )
    for written, host, port in (
        ("tcp:127.0.0.1:3310", "127.0.0.1", 3310),
        ("tcp:[::1]:3310", "::1", 3310),
        ("tcp:clamav.ch-exemple.local:3310", "clamav.ch-exemple.local", 3310),
    ):
        config["antivirus"] = {"clamd": written}
        loaded = parse_config(config, base / "relay.yaml").antivirus
        assert loaded is not None
        assert (loaded.clamd.host, loaded.clamd.port, str(loaded.clamd)) == (host, port, written)


def test_the_xdm_section_as_loaded(base: Path) -> None:
    """Issue 19: absent, warn (logged only) without test identities; YAML's
    bare « off » (false) is the mode off."""
    config = good()
    assert parse_config(config, base / "relay.yaml").xdm == XdmSettings(Mode.WARN, False)
    config["xdm"] = {"mode": "refuse", "allow_test_identities": True}
    assert parse_config(config, base / "relay.yaml").xdm == XdmSettings(Mode.REFUSE, True)
    config["xdm"] = {"mode": False}
    assert parse_config(config, base / "relay.yaml").xdm == XdmSettings(Mode.OFF, False)
    config["xdm"] = None
    assert parse_config(config, base / "relay.yaml").xdm == XdmSettings()
