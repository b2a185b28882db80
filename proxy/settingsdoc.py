"""The settings as people meet them: errors naming the variable, the listing, the README table.

``Settings`` (``proxy/config.py``) is the one source: each field's description, constraints and
``json_schema_extra`` (``shown``: how its default reads; ``form``: what it accepts, where the
type alone says too little; ``secret``: never printed) feed everything here.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import textwrap
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import NoDecode, SettingsError

from proxy.config import Settings

ENV_PREFIX = "PROXY_"
USAGE_EXIT = 2  # a configuration the proxy cannot run with, as argparse's usage errors


class SettingsProblems(Exception):
    """The environment holds settings the proxy cannot run with: one line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def env_name(field: str) -> str:
    """``port`` -> ``PROXY_PORT``."""
    return ENV_PREFIX + field.upper()


def _extra(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def _plain_type(info: FieldInfo) -> Any:
    """The annotation without ``| None``."""
    annotation = info.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(kept) == 1:
            return kept[0]
    return annotation


def _bounds(info: FieldInfo) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in info.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, name.capitalize())):
                found[name] = getattr(item, name)
    return found


def accepted_form(info: FieldInfo) -> str:
    """What a field's variable accepts, in words: ``an integer between 0 and 65535``."""
    extra = _extra(info)
    if "form" in extra:
        return str(extra["form"])
    kind = _plain_type(info)
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(arg) for arg in get_args(kind))
    if kind is bool:
        return "true or false"
    if kind in (int, float):
        noun = "an integer" if kind is int else "a number"
        bounds = _bounds(info)
        low = bounds.get("ge", bounds.get("gt"))
        if "ge" in bounds and "le" in bounds:
            return f"{noun} between {bounds['ge']} and {bounds['le']}"
        if "gt" in bounds:
            return f"{noun} greater than {low}"
        if "ge" in bounds:
            return f"{noun} of at least {low}"
        return noun
    return "text"


def _is_json(info: FieldInfo) -> bool:
    """Whether pydantic-settings decodes the variable as JSON (lists, dicts, models)."""
    kind = _plain_type(info)
    container = get_origin(kind) in (list, dict) or (
        isinstance(kind, type) and issubclass(kind, BaseModel)
    )
    return container and NoDecode not in info.metadata


def _is_secret(info: FieldInfo) -> bool:
    return bool(_extra(info).get("secret"))


def _environment_lookup() -> dict[str, tuple[str, str]]:
    """``PROXY_*`` variables by upper-case name -> (name as written, value); case-insensitive
    like pydantic-settings."""
    return {
        name.upper(): (name, value)
        for name, value in os.environ.items()
        if name.upper().startswith(ENV_PREFIX)
    }


def _unknown_names(variables: Mapping[str, tuple[str, str]]) -> list[str]:
    # Compared without the prefix, which every name shares and would make any name "close".
    known = [field.upper() for field in Settings.model_fields]
    lines = []
    for upper, (written, _) in sorted(variables.items()):
        suffix = upper.removeprefix(ENV_PREFIX)
        if suffix in known:
            continue
        close = difflib.get_close_matches(suffix, known, 1, 0.75)
        hint = (
            f"did you mean {ENV_PREFIX}{close[0]}?"
            if close
            else "`python -m proxy settings` lists them"
        )
        lines.append(f"{written}: unknown setting; {hint}")
    return lines


def _json_problems(variables: Mapping[str, tuple[str, str]]) -> list[str]:
    lines = []
    for field, info in Settings.model_fields.items():
        found = variables.get(env_name(field))
        if found is None or not _is_json(info):
            continue
        try:
            json.loads(found[1])
        except ValueError as exc:
            # The decoder's message gives the position, never the text (which may be secret).
            lines.append(f"{found[0]}: not valid JSON ({exc}); expected {accepted_form(info)}")
    return lines


def _validation_lines(
    error: ValidationError, variables: Mapping[str, tuple[str, str]]
) -> list[str]:
    lines = []
    for problem in error.errors():
        location = problem["loc"]
        message = problem["msg"].removeprefix("Value error, ")
        if not location:  # a model validator: its message names the variables itself
            lines.append(message)
            continue
        field = str(location[0])
        info = Settings.model_fields[field]
        name = variables.get(env_name(field), (env_name(field), ""))[0]
        if len(location) == 1 and not _is_json(info) and not _is_secret(info):
            lines.append(f"{name}: {_shown_input(problem['input'])} is not {accepted_form(info)}")
            continue
        where = ", ".join(
            f"item {part}" if isinstance(part, int) else str(part) for part in location[1:]
        )
        lines.append(
            f"{name}: {where + ': ' if where else ''}{message}; expected {accepted_form(info)}"
        )
    return lines


def _shown_input(value: object, limit: int = 60) -> str:
    text = repr(value if isinstance(value, str) else str(value))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def load_settings() -> Settings:
    """Settings from the environment, every problem with them raised at once as
    ``SettingsProblems``: unknown ``PROXY_*`` names, JSON that does not parse, invalid values."""
    variables = _environment_lookup()
    undecodable = _json_problems(variables)
    lines = _unknown_names(variables) + undecodable
    if undecodable:  # pydantic-settings would stop at the first of those
        raise SettingsProblems(lines)
    try:
        settings = Settings()
    except ValidationError as exc:
        raise SettingsProblems(lines + _validation_lines(exc, variables)) from None
    except SettingsError as exc:  # a decoding failure the JSON check did not foresee
        raise SettingsProblems([*lines, str(exc)]) from None
    if lines:
        raise SettingsProblems(lines)
    return settings


def settings_or_exit() -> Settings:
    """``load_settings``, or one line per problem on stderr, no traceback, and status 2."""
    try:
        return load_settings()
    except SettingsProblems as problems:
        for line in problems.lines:
            print(line, file=sys.stderr)
        raise SystemExit(USAGE_EXIT) from None


def shown_default(info: FieldInfo) -> str:
    """A field's default as the README shows it."""
    extra = _extra(info)
    if "shown" in extra:
        return str(extra["shown"])
    if info.default is None:
        return "none"
    return f"`{_plain_value(info.default)}`"


def _plain_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def markdown_table() -> str:
    """The README's configuration table (``python -m proxy settings --markdown``)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for field, info in Settings.model_fields.items():
        rows.append(f"| `{env_name(field)}` | {shown_default(info)} | {info.description} |")
    return "\n".join(rows) + "\n"


def current_value(field: str, value: object) -> str:
    """A setting's value for the listing; secrets masked, API keys by name only."""
    if isinstance(value, SecretStr):
        return "********"
    if field == "signing_keys" and isinstance(value, dict):
        return json.dumps({kid: "********" for kid in value})
    if field == "api_keys" and isinstance(value, list):
        return ", ".join(_api_key(key) for key in value) or "none"
    if value is None or value == [] or value == {}:
        return "none"
    if value == "":
        return "empty"
    return _plain_value(value)


def _api_key(key: Any) -> str:
    mounts = "" if key.mounts is None else f", mounts {', '.join(key.mounts)}"
    return f"{key.name} (prefix {key.prefix!r}{mounts})"


def listing(settings: Settings) -> str:
    """Every setting: variable, current value (and whether the environment set it), what it
    means, what it accepts and its default."""
    variables = _environment_lookup()
    blocks = []
    for field, info in Settings.model_fields.items():
        value = current_value(field, getattr(settings, field))
        default = shown_default(info).replace("`", "")
        source = f"set; default {default}" if env_name(field) in variables else "default"
        meaning = (info.description or "").replace("`", "")
        about = textwrap.fill(
            f"{meaning}. Accepts {accepted_form(info)}.",
            width=100,
            initial_indent="    ",
            subsequent_indent="    ",
        )
        blocks.append(f"{env_name(field)} = {value}  ({source})\n{about}")
    return "\n".join(blocks) + "\n"
