"""Every name mss-relay imports from aiosmtpd, aiosmtplib and dkimpy exists in
the installed versions, said clearly: some are private (aiosmtpd's
_AuthMechAttr, login_always_fail, log in front/smtp_setup.py), which a release
within the pinned ranges could drop, and the relay would then fail at import
with a bare ImportError. Read from the sources with ast, not from a copied
list; this file imports nothing of mss_relay, so it runs even then."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mss_relay"
LIBRARIES = {"aiosmtpd": "aiosmtpd", "aiosmtplib": "aiosmtplib", "dkim": "dkimpy"}


def _imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.level == 0
                and node.module.split(".")[0] in LIBRARIES
            ):
                where = str(path.relative_to(PACKAGE.parent))
                found += [(node.module, alias.name, where) for alias in node.names]
    return found


IMPORTS = _imports()


def test_the_relay_imports_from_these_libraries() -> None:
    # The scan itself works: front/smtp_setup.py's private names are among them.
    assert ("aiosmtpd.smtp", "_AuthMechAttr", "mss_relay/front/smtp_setup.py") in IMPORTS


@pytest.mark.parametrize(("module", "name", "where"), IMPORTS)
def test_each_imported_name_exists(module: str, name: str, where: str) -> None:
    dist = LIBRARIES[module.split(".")[0]]
    loaded = importlib.import_module(module)
    # A submodule (from dkim import canonicalization) is a name too.
    submodule = hasattr(loaded, "__path__") and importlib.util.find_spec(f"{module}.{name}")
    assert hasattr(loaded, name) or submodule, (
        f"{module} has no {name}: mss-relay's {where} imports it;"
        f" pin {dist} in pyproject.toml to a tested version"
    )
