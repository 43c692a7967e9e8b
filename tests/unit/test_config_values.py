"""What good configurations load to: every key and default, as today.

The expected values are in config_values.json (written from the loader before
it was rewritten on a declarative schema): a rewrite must give the same
configuration, key for key, default for default.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mss_relay.config import load_config, parse_config
from tests.support.processes import ROOT
from tests.unit.test_config_errors import good

EXPECTED = Path(__file__).with_name("config_values.json")


def plain(value: object, base: Path) -> Any:
    """A JSON-able form: paths relative to the file's folder, enums as values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name), base) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return (
            str(value) if value.is_relative_to("/abs") else "{base}/" + os.path.relpath(value, base)
        )
    if isinstance(value, Mapping):
        return {str(k): plain(v, base) for k, v in sorted(value.items())}
    if isinstance(value, frozenset | set):
        return sorted(plain(v, base) for v in value)
    if isinstance(value, tuple | list):
        return [plain(v, base) for v in value]
    return value


def full() -> dict[str, Any]:
    """Every key of every section, none at its default."""
    config = good()
    config["listeners"] += [
        {"name": "imp", "role": "submission", "host": "::1", "port": 10465, "tls": "implicit"},
        {"name": "in", "role": "inbound", "host": "localhost", "port": 10026, "tls": "none"},
        {"name": "m1", "role": "milter", "path": "run/milter.sock"},
        {"name": "m2", "role": "milter", "host": "127.0.0.2", "port": 8890, "tls": "none"},
    ]
    config["tls"]["self_signed"] = True
    config["upstream"] = {
        "host": "operator.example",
        "tls": "implicit",
        "ca_file": "relay.pem",
        "client_certificate": "relay.pem",
        "client_key": "relay.key",
        "username": "relay",
        "password_file": "relay.key",
        "timeout": 7,
        "pool_size": 0,
        "pool_idle": "1m",
    }
    config["inbound_delivery"] = {"capture": "capture", "port": 2525, "tls": "starttls"}
    config["state"] = {"database": "db/s.sqlite3", "record_timeout": "1.5s"}
    config["control"] = {"socket": "run/control.sock"}
    config["log"] = {"file": "log/relay.jsonl", "required": False}
    config["conversations"] = {"close_after_days": 30, "retention_days": 10, "purge_interval": 60}
    config["limits"] = {
        "max_attachment_size": "1MB",
        "max_message_size": "2 MiB",
        "max_recipients": 7,
        "per_domain": {"Patient.MSSante.fr.": "10MB", "b.fr": 1000},
    }
    config["users"].append(
        {"name": "msecret", "password_hash": config["users"][0]["password_hash"]}
    )
    config["bals"] += [
        {
            "address": " accueil@ch-exemple.mssante.fr ",
            "type": "organisationnelle",
            "users": ["jdupont", "msecret"],
            "patients_may_initiate": True,
            "auto_close": True,
        },
        {"address": "no-reply@ch-exemple.mssante.fr", "type": "applicative", "users": None},
    ]
    config["dkim"] = [
        {"domain": "CH-Exemple.mssante.fr.", "selector": " s1 ", "private_key": "k1"},
        {
            "domain": "ch-exemple.mssante.fr",
            "selector": "s-2.x_y",
            "private_key": "/abs/k2",
            "algorithm": "ed25519-sha256",
            "generate": True,
        },
    ]
    config["inbound"] = {
        "require_dkim_for_patients": True,
        "dkim_dns_file": "relay.pem",
        "dns_timeout": 0.5,
    }
    config["throttle"] = {
        "auth_max_failures_per_user": 1,
        "auth_max_failures_per_client": 2,
        "auth_window": "1h",
        "auth_lockout": "2m",
        "auth_failure_delay": 0,
        "auth_max_delay": "0s",
        "messages_per_minute": 0,
        "recipients_per_hour": 0,
        "max_connections": 3,
        "max_connections_per_client": 4,
        "max_concurrent_messages": 5,
    }
    config["attachments"] = {
        "refused_extensions": [".EXE", " bat "],
        "also_refused_extensions": ["js"],
        "refused_content_types": ["Application/X-Foo"],
        "also_refused_content_types": ["text/x-bar"],
        "inspect_archives": False,
    }
    config["trusted_clients"] = {"10.0.0.12": "jdupont", "::ffff:10.0.0.13": "msecret"}
    config["timeouts"] = {
        "idle": "10m",
        "data": 60,
        "busy_wait": 1.5,
        "min_data_rate": "2KiB",
        "data_rate_grace": "30s",
    }
    config["workers"] = 3
    config["xdm"] = {"mode": "refuse", "allow_test_identities": True}
    return config


def nulls() -> dict[str, Any]:
    """Keys given as null: their defaults."""
    config = good()
    config["listeners"][0].update(host=None, tls=None)
    config["upstream"].update(port=None, tls=None, timeout=None)
    config.update(
        state=None, log=None, limits=None, dkim=None, throttle=None, hostname=None, workers=None
    )
    return config


CONFIGS = {"good": good, "full": full, "nulls": nulls}


def loaded(base: Path) -> dict[str, Any]:
    for name in ("relay.pem", "relay.key"):
        (base / name).write_text("not read by the loader\n")
    values = {
        name: plain(parse_config(make(), base / "relay.yaml"), base)
        for name, make in CONFIGS.items()
    }
    values["demo"] = plain(load_config(ROOT / "config" / "demo.yaml"), ROOT / "config")
    # The example, with a hash and its certificate files, in a folder of its own.
    example = base / "example"
    (example / "certs").mkdir(parents=True)
    for name in ("relay.pem", "relay.key"):
        (example / "certs" / name).write_text("not read by the loader\n")
    text = (ROOT / "config" / "example.yaml").read_text()
    hash_ = good()["users"][0]["password_hash"]
    (example / "relay.yaml").write_text(text.replace("<output of mss-relay hash-password>", hash_))
    values["example"] = plain(load_config(example / "relay.yaml"), example)
    return values


def test_good_configurations_load_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("socket.getfqdn", lambda: "fqdn.example")
    assert loaded(tmp_path) == json.loads(EXPECTED.read_text())
