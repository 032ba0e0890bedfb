"""Secret references in flow specs: ``${env:NAME}`` and ``${file:/path}`` in option values.

An option value (or any string inside it: a header value, a list item) may
name where a secret lives instead of holding it::

    "dsn": "postgres://app:${env:PGPASSWORD}@db:5432/app"
    "secret_key": "${file:/run/secrets/s3_secret_key}"
    "headers": {"Authorization": "Bearer ${env:HOOK_TOKEN}"}

- ``${env:NAME}``: the environment variable ``NAME`` of the process that runs the
  flow; unset or empty is an error.
- ``${file:PATH}``: the text of the file (``~`` expanded, relative to the working
  directory), without its trailing newline; missing or unreadable is an error.
- ``$${`` is a literal ``${`` (``"pa$${x}"`` is the password ``pa${x}``).
- ``${kind:...}`` with any other kind is an error (so a typo never becomes a
  literal password); any other ``${`` is kept as written.

The flow store, every API response and every log keep the reference text; values
are resolved only where the typed options are built
(:meth:`FlowSpec.source_options` / :meth:`FlowSpec.destination_options`), that
is by the worker (``wallaby-worker``, ``python -m bytewax.run dataflows.flow:flow``)
and by the API server's own source operations, each in its own environment.
Validation when a flow is created or loaded (:func:`check_options`) checks the
references' syntax and every option without one; an option with a reference is
validated once resolved (:func:`parse_options`). Errors name the option and the
variable or file, never a resolved value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wallaby.core.errors import MASK, ConfigError, FieldProblem
from wallaby.core.options import Options, join_path, validate_options

# "$${" (an escaped "${"), or "${kind:arg}" (close brace optional so that an unterminated one is reported)
_PART = re.compile(r"\$\$\{|\$\{(?P<kind>[A-Za-z][A-Za-z0-9_]*):(?P<arg>[^}]*)(?P<close>\}?)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KINDS = ("env", "file")


class UnresolvedReference(ConfigError):
    """A reference this process cannot resolve (variable unset or empty, file missing or unreadable, bad syntax).

    A :class:`ConfigError` (a worker exits 2); its own class so that a process checking a flow on another's behalf
    (the API server at CreateFlow) can tell "not resolvable here" from "invalid"."""


def has_references(value: Any) -> bool:
    """Whether ``value`` (a string, or a list/object holding strings) has a reference or a ``$${`` escape."""
    if isinstance(value, str):
        return _PART.search(value) is not None
    if isinstance(value, Mapping):
        return any(has_references(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_references(v) for v in value)
    return False


def references(value: Any) -> list[str]:
    """The references in ``value`` as written (``${env:NAME}``), in order; escapes left out."""
    if isinstance(value, str):
        return [m.group(0) for m in _PART.finditer(value) if m.group("kind") and m.group("close")]
    if isinstance(value, Mapping):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list | tuple):
        return [r for v in value for r in references(v)]
    return []


def _problem(m: re.Match) -> str | None:
    """What is wrong with a reference's syntax, else None."""
    kind = m.group("kind")
    if not m.group("close"):
        return f"unterminated reference '${{{kind}:…': close it with '}}' (write '$${{' for a literal '${{')"
    if kind.lower() not in KINDS:
        return (f"unknown reference '${{{kind}:…}}': use ${{env:NAME}} or ${{file:PATH}}"
                " (write '$${' for a literal '${')")
    arg = m.group("arg").strip()
    if kind.lower() == "env" and not _ENV_NAME.fullmatch(arg):
        return f"'${{env:{arg}}}' does not name an environment variable (letters, digits and '_')"
    if kind.lower() == "file" and not arg:
        return "'${file:}' names no file"
    return None


def _substitute(text: str, path: str, env: Mapping[str, str] | None, problems: list[FieldProblem],
                values: list[str]) -> str:
    """``text`` with its references resolved (``env`` None: syntax only, ``text`` returned unchanged)."""
    out: list[str] = []
    pos = 0
    for m in _PART.finditer(text):
        out.append(text[pos:m.start()])
        pos = m.end()
        if m.group(0) == "$${":
            out.append("${")
            continue
        wrong = _problem(m)
        if wrong:
            problems.append(FieldProblem(path, wrong))
            continue
        if env is None:
            continue
        kind, arg, ref = m.group("kind").lower(), m.group("arg").strip(), m.group(0)
        if kind == "env":
            value = env.get(arg)
            if value is None:
                problems.append(FieldProblem(path, f"environment variable {arg} is not set (from {ref})"))
                continue
            if value == "":
                problems.append(FieldProblem(path, f"environment variable {arg} is empty (from {ref})"))
                continue
        else:
            p = Path(arg).expanduser()
            try:
                value = p.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
                problems.append(FieldProblem(path, f"cannot read secret file {p}: {reason} (from {ref})"))
                continue
            if not value:
                problems.append(FieldProblem(path, f"secret file {p} is empty (from {ref})"))
                continue
        values.append(value)
        out.append(value)
    out.append(text[pos:])
    return text if env is None else "".join(out)


def _walk(value: Any, path: str, env: Mapping[str, str] | None, problems: list[FieldProblem],
          values: list[str]) -> Any:
    if isinstance(value, str):
        return _substitute(value, path, env, problems, values)
    if isinstance(value, Mapping):
        return {k: _walk(v, join_path(path, str(k)), env, problems, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, join_path(path, i), env, problems, values) for i, v in enumerate(value)]
    return value


def check_syntax(value: Any, path: str) -> list[FieldProblem]:
    """The problems with the references in ``value`` (reads no variable and no file)."""
    problems: list[FieldProblem] = []
    _walk(value, path, None, problems, [])
    return problems


def resolve(value: Any, path: str, env: Mapping[str, str] | None = None) -> tuple[Any, list[FieldProblem], list[str]]:
    """``(value with every reference resolved, problems, the values substituted)``; ``env`` defaults to
    ``os.environ``. Problems name ``path`` (and below it, for objects and lists) and the variable or file."""
    problems: list[FieldProblem] = []
    values: list[str] = []
    out = _walk(value, path, os.environ if env is None else env, problems, values)
    return out, problems, values


def resolve_options(options: Mapping[str, Any], path: str, what: str = "options",
                    env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every option of ``options`` resolved, or a :class:`ConfigError` listing each reference that could not be."""
    out, problems, _ = resolve(dict(options), path, env)
    if problems:
        raise UnresolvedReference(what, problems)
    return out


def _known(model: type[Options], options: Mapping[str, Any], path: str) -> dict[str, str]:
    """``{problem path of an option holding a reference: the references}`` for the options ``model`` knows."""
    names = set(model.option_names())
    return {join_path(path, k): ", ".join(references(v)) or "$${" for k, v in options.items()
            if k in names and has_references(v)}


def _under(problem_path: str, referenced: Mapping[str, str]) -> str | None:
    for p in referenced:
        if problem_path == p or problem_path.startswith((p + ".", p + "[")):
            return p
    return None


def check_options(model: type[Options], options: Any, path: str,
                  context: Mapping[str, Any] | None = None) -> tuple[Options | None, list[FieldProblem]]:
    """:func:`~wallaby.core.options.validate_options` for a flow as written (its references unresolved): the
    references' syntax, and every problem but those of an option holding a reference (checked once resolved).
    The model is None when any option holds one, so the typed options are built from the resolved values."""
    if not isinstance(options, Mapping) or not has_references(options):
        return validate_options(model, options, path, context)
    problems = check_syntax(dict(options), path)
    referenced = _known(model, options, path)
    _, found = validate_options(model, options, path, context)
    problems += [p for p in found if _under(p.path, referenced) is None]
    return None, problems


def parse_options(model: type[Options], options: Mapping[str, Any], *, what: str = "options",
                  path: str = "options", context: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None) -> Any:
    """:meth:`Options.parse` of ``options`` with its references resolved (``env`` defaults to ``os.environ``).

    A problem with a resolved value names the option and its reference; the value itself is never shown."""
    if not isinstance(options, Mapping) or not has_references(options):
        return model.parse(options, what=what, path=path, context=context)
    resolved, problems, values = resolve(dict(options), path, env)
    if problems:
        raise UnresolvedReference(what, problems)
    parsed, found = validate_options(model, resolved, path, context)
    if not found:
        return parsed
    referenced = _known(model, options, path)
    secrets = sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)
    out = []
    for p in found:
        message = p.message
        where = _under(p.path, referenced)
        if where is not None:
            key = where.rpartition(".")[2]
            whole = resolved.get(key)
            if isinstance(whole, str):
                message = message.replace(repr(whole), repr(MASK))
        for secret in secrets:
            message = message.replace(secret, MASK)
        if where is not None:
            message += f" (value from {referenced[where]})"
        out.append(FieldProblem(p.path, message))
    raise ConfigError(what, out)


# -- showing options that hold references ---------------------------------------------------------

_TOKEN = "WallabyRef{}Z"
_TOKENS = re.compile(r"(WallabyRef\d+Z)")
_SCHEME_ONLY = re.compile(r"\s*(?:[A-Za-z][A-Za-z0-9._~+/-]*\s+)?")  # "", "Bearer ", "Basic "


def _without_references(text: str) -> str:
    return _PART.sub(lambda m: "" if m.group("kind") and m.group("close") else m.group(0), text)


def _shown_header(value: Any) -> Any:
    if isinstance(value, str) and references(value) and _SCHEME_ONLY.fullmatch(_without_references(value)):
        return value
    return MASK


def shown_option(name: str, value: Any, redact: Any) -> Any:
    """An option's value as the API shows it: ``redact(name, value)`` (:func:`wallaby.core.spec.redact_option`),
    except that a value whose only secrets are references is shown as written (``${env:PGPASSWORD}``,
    ``postgres://app:${env:PGPASSWORD}@db/app``, a header ``Bearer ${env:TOKEN}``): a reference is no secret."""
    if not has_references(value):
        return redact(name, value)
    if name.lower() == "headers":
        if isinstance(value, Mapping):
            return {k: _shown_header(v) for k, v in value.items()}
        if isinstance(value, str):
            items = (item.partition(":") for item in value.split(",") if item.strip())
            return ",".join(f"{k.strip()}:{_shown_header(v.strip()) if sep else MASK}" for k, sep, v in items)
        return MASK
    if isinstance(value, Mapping):
        return {k: shown_option(str(k), v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shown_option(name, v, redact) for v in value]
    if not isinstance(value, str) or _TOKENS.search(value):
        return redact(name, value)
    tokens: list[str] = []

    def token(m: re.Match) -> str:
        if not (m.group("kind") and m.group("close")):
            return m.group(0)
        tokens.append(_TOKEN.format(len(tokens)))
        return tokens[-1]

    stand_in = _PART.sub(token, value)
    redacted = redact(name, stand_in)
    # every masked part must be exactly one reference: else something beside the references is secret
    pattern = "".join(f"(?:{p}|{re.escape(MASK)})" if _TOKENS.fullmatch(p) else re.escape(p)
                      for p in _TOKENS.split(stand_in))
    if isinstance(redacted, str) and re.fullmatch(pattern, redacted):
        return value
    return redact(name, value)


__all__ = ["KINDS", "UnresolvedReference", "check_options", "check_syntax", "has_references", "parse_options",
           "references", "resolve", "resolve_options", "shown_option"]
