"""The layers hold (docs/ARCHITECTURE.md "Layers"): the import-linter contract of ``.importlinter`` is kept, and
first-party imports sit at module top, where the contract and a reader see them. Function-local first-party
imports are allowed only for an optional heavy driver (a destination's writer module, which pulls in duckdb,
confluent_kafka or boto3, imported when its destination is built): at most ``LOCAL_IMPORTS_MAX``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("wallaby", "sources", "sinks", "operators", "dataflows")
LOCAL_IMPORTS_MAX = 10


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


def test_function_local_first_party_imports_are_few():
    found = _local_first_party_imports()
    assert len(found) <= LOCAL_IMPORTS_MAX, "first-party imports inside functions (move them to the top):\n" + \
        "\n".join(found)


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
