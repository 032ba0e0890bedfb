"""The layers hold (docs/ARCHITECTURE.md "Layers"): the import-linter contract of ``.importlinter`` is kept, and
first-party imports sit at module top, where the contract and a reader see them. Function-local first-party
imports are allowed only in a destination's plugin module (``sinks/<destination>/__init__.py``) and only of that
destination's own modules: its heavy driver (a writer or staging module, which pulls in duckdb, confluent_kafka,
boto3 or a warehouse connector) is imported when the destination is built or its staging resolved."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("wallaby", "sources", "sinks", "operators", "dataflows")


def _local_first_party_imports() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "v1" in path.relative_to(ROOT).parts:
                continue
            tree = ast.parse(path.read_text(), str(path))
            for func in ast.walk(tree):
                if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(func):
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom):
                        names = ["." if node.level else (node.module or "")]
                    else:
                        continue
                    if any(n == "." or n.split(".")[0] in PACKAGES for n in names):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} ({func.name}): {', '.join(names)}")
    return sorted(set(found))


def test_function_local_first_party_imports_are_only_a_destinations_own_driver():
    found = _local_first_party_imports()
    elsewhere = []
    for entry in found:
        path, _, rest = entry.partition(":")
        parts = Path(path).parts
        own = len(parts) == 3 and parts[0] == "sinks" and parts[2] == "__init__.py"
        if not (own and rest.split(": ", 1)[1] == f"sinks.{parts[1]}"):
            elsewhere.append(entry)
    assert not elsewhere, "first-party imports inside functions (move them to the top):\n" + "\n".join(elsewhere)
    assert found  # the check sees the plugins' lazy imports


def test_the_layer_contract_is_kept():
    linter = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_the_contract_names_every_package():
    """A new top-level package is placed in a layer, not left outside the contract."""
    contract = (ROOT / ".importlinter").read_text()
    for package in PACKAGES:
        assert f"    {package}\n" in contract
    for layer in ("wallaby.control", "dataflows", "sinks | operators", "sources", "wallaby.state", "wallaby.wire",
                  "wallaby.core", "wallaby.v1"):
        assert f"    {layer}\n" in contract
