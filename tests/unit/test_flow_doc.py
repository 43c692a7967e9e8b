"""docs/flow.md names exactly the rules the core can emit: both sides read,
the code's from its source (ast), the document's from its tables."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "mss_relay" / "core"
FLOW = ROOT / "docs" / "flow.md"


def _code_rules() -> set[str]:
    """Every constant rule= of a call in the core (Verdict.reject/tempfail/
    accept and the helpers that build them), and the Policy's check names
    (the ("name", check) pairs of policy.py)."""
    names: set[str] = set()
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                names.update(
                    k.value.value
                    for k in node.keywords
                    if k.arg == "rule"
                    and isinstance(k.value, ast.Constant)
                    and isinstance(k.value.value, str)
                )
            if (
                path.name == "policy.py"
                and isinstance(node, ast.Tuple)
                and len(node.elts) == 2
                and isinstance(node.elts[0], ast.Constant)
                and isinstance(node.elts[0].value, str)
            ):
                names.add(node.elts[0].value)
    names.discard("policy")  # Verdict.accept's default: no rule fired
    return names


def _doc_rules() -> set[str]:
    """The `code` names in the « rule name » column of flow.md's tables."""
    names: set[str] = set()
    column: int | None = None
    for line in FLOW.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            column = None  # a table ends
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if column is None:
            column = cells.index("rule name") if "rule name" in cells else -1
            continue
        if column >= 0 and len(cells) > column and not set(cells[column]) <= set("- "):
            names.update(re.findall(r"`([a-z_]+)`", cells[column]))
    return names


def test_the_collectors_find_rules() -> None:
    # A parser that found nothing would make the comparison below vacuous.
    assert {"wire_size", "dkim_signable", "patient_dkim", "log_required"} <= _code_rules()
    assert {"wire_size", "dkim_signable", "patient_dkim", "log_required"} <= _doc_rules()


def test_flow_md_names_exactly_the_rules_the_core_emits() -> None:
    code, doc = _code_rules(), _doc_rules()
    assert not code - doc, f"emitted by the core, missing from docs/flow.md: {sorted(code - doc)}"
    assert not doc - code, f"in docs/flow.md, never emitted by the core: {sorted(doc - code)}"
