"""A small Dockerfile reader for the deployment tests: instructions with their stage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True, slots=True)
class Instruction:
    stage: int  # 0 for the first FROM's stage
    keyword: str  # upper case
    value: str  # continuation lines joined by single spaces


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of ``path``, with comments dropped and continuation lines joined."""
    result: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(stage, keyword, value.strip()))
    return result


def exec_form(value: str) -> list[str]:
    """The JSON array of an exec-form instruction; ValueError for the shell form."""
    parsed = json.loads(value)
    if not isinstance(parsed, list) or not all(isinstance(part, str) for part in parsed):
        raise ValueError(f"not an exec-form array: {value}")
    return parsed


def healthcheck_command(path: Path = DOCKERFILE) -> list[str]:
    """The exec-form command of the final stage's HEALTHCHECK."""
    final = max(i.stage for i in instructions(path))
    checks = [i for i in instructions(path) if i.stage == final and i.keyword == "HEALTHCHECK"]
    if len(checks) != 1:
        raise ValueError(f"expected one HEALTHCHECK in the final stage, found {len(checks)}")
    _, _, command = checks[0].value.partition("CMD ")
    return exec_form(command)
