"""The facts of USAGE.md that tests/test_spec.py checks (option names, documented defaults, flow fields), kept in
the repo as tests/data/usage_facts.json.

USAGE.md, the user contract, lives outside the repo (``../shared/spec/USAGE.md``); a clone has none, so the tests
read the committed facts. Made from USAGE.md by this module:

    .venv/bin/python -m tests.usage_facts           # rewrite tests/data/usage_facts.json from ../shared/spec/USAGE.md
    .venv/bin/python -m tests.usage_facts --check   # exit 1 when the committed facts no longer match USAGE.md

``test_spec.py::test_usage_facts_match_usage_md`` makes the same comparison whenever ``../shared/spec/USAGE.md``
is present (it is skipped, with the reason, when it is not).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USAGE_MD = ROOT.parent / "shared" / "spec" / "USAGE.md"
FACTS = ROOT / "tests" / "data" / "usage_facts.json"

# The sections of USAGE.md whose option bullets test_spec.py checks against the option models, and the section
# listing the flow's own fields.
OPTION_SECTIONS = (
    "Postgres Source Options", "Backfill + Replay", "Kafka Destination", "S3 Destination",
    "HTTP / Webhook Destination", "gRPC Destination", "DuckLake Destination", "Postgres Stream Destination",
    "Snowflake Destination", "Snowpipe Destination", "DuckDB Destination", "ClickHouse Destination",
    "Destination Metadata + Append/Soft Delete", "Destination Type Mappings", "Type Mapping (Schema Translation)",
)
FLOW_SECTION = "Create a Flow (gRPC)"


def usage_sections(text: str) -> dict[str, list[str]]:
    """Heading -> its bullet lines (``- ...``), for every ``##``/``###`` heading of USAGE.md's text."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"#{2,3} (.+)", line)
        if m:
            current = m.group(1).strip()
            sections[current] = []
        elif current and line.startswith("- "):
            sections[current].append(line[2:])
    return sections


def bullet_names(bullet: str) -> list[str]:
    """Option names of one bullet: the backticked words before the explanation, outside parentheses.

    ``"`insecure` (`true` default), `tls_ca_file`, `tls_server_name`"`` -> insecure, tls_ca_file, tls_server_name;
    ``"`access_key` / `secret_key` / `session_token` (optional)"`` -> the three.
    """
    head = bullet.split(" — ", 1)[0]
    head = re.sub(r"\([^()]*\)", "", head)
    return re.findall(r"`([a-z][a-z0-9_]*)`", head)


def bullet_default(bullet: str) -> tuple[str, str] | None:
    """``(name, default)`` when a bullet gives one default right after its first name."""
    m = re.match(r"`([a-z_]+)` \(([^()]*)\)", bullet)
    if not m:
        return None
    inner = m.group(2)
    d = re.search(r"default `([^`]*)`", inner) or re.match(r"`([^`]*)` default", inner)
    return (m.group(1), d.group(1)) if d else None


def facts_from(text: str) -> dict:
    """The facts of USAGE.md's text: per option section its option names and documented defaults (in the order of
    the document; a section USAGE.md lacks is left out), and the flow fields."""
    sections = usage_sections(text)
    out: dict[str, dict] = {}
    for section in OPTION_SECTIONS:
        if section not in sections:
            continue
        defaults = [d for b in sections[section] if (d := bullet_default(b))]
        if len({name for name, _ in defaults}) != len(defaults):
            raise ValueError(f"USAGE.md section {section!r} gives a default for one option twice: {defaults}")
        out[section] = {"options": [n for b in sections[section] for n in bullet_names(b)], "defaults": dict(defaults)}
    return {
        "about": "Made from ../shared/spec/USAGE.md by `python -m tests.usage_facts`; do not edit by hand.",
        "sections": out,
        "flow_fields": [m.group(1) for b in sections.get(FLOW_SECTION, []) if (m := re.match(r"`([a-z_.]+)` — ", b))],
    }


def load_facts(path: Path = FACTS) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def render(facts: dict) -> str:
    return json.dumps(facts, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    if not USAGE_MD.is_file():
        print(f"no {USAGE_MD}: nothing to make the facts from", file=sys.stderr)
        return 2
    text = render(facts_from(USAGE_MD.read_text(encoding="utf-8")))
    if "--check" in argv:
        if FACTS.is_file() and FACTS.read_text(encoding="utf-8") == text:
            return 0
        print(f"{FACTS.relative_to(ROOT)} does not match {USAGE_MD}: run python -m tests.usage_facts", file=sys.stderr)
        return 1
    FACTS.parent.mkdir(parents=True, exist_ok=True)
    FACTS.write_text(text, encoding="utf-8")
    print(f"wrote {FACTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
