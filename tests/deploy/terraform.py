"""Read terraform/ with python-hcl2 into plain values: labels and strings lose their quotes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2  # type: ignore[import-untyped,unused-ignore]

from tests.deploy.dockerfile import ROOT

TERRAFORM = ROOT / "terraform"
MODULE = TERRAFORM / "modules" / "media-proxy"
EXAMPLE = TERRAFORM / "examples" / "complete"
Body = dict[str, Any]


def unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def clean(value: Any) -> Any:
    """Drop python-hcl2's ``__markers__`` and the quotes it keeps around literal strings."""
    if isinstance(value, dict):
        return {
            unquote(k): clean(v)
            for k, v in value.items()
            if not (k.startswith("__") and k.endswith("__"))
        }
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, str):
        return unquote(value)
    return value


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        parsed = clean(hcl2.load(handle))
    assert isinstance(parsed, dict)
    return parsed


@dataclass
class Config:
    """Every block of one directory of .tf files, indexed by kind and label."""

    resources: dict[tuple[str, str], Body] = field(default_factory=dict)
    data: dict[tuple[str, str], Body] = field(default_factory=dict)
    variables: dict[str, Body] = field(default_factory=dict)
    outputs: dict[str, Body] = field(default_factory=dict)
    locals: Body = field(default_factory=dict)
    modules: dict[str, Body] = field(default_factory=dict)
    terraform: list[Body] = field(default_factory=list)

    def of_type(self, kind: str) -> dict[str, Body]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}


def load_dir(directory: Path) -> Config:
    config = Config()
    seen: dict[str, int] = defaultdict(int)
    for path in sorted(directory.glob("*.tf")):
        for kind, blocks in load(path).items():
            seen[kind] += 1
            for block in blocks:
                if kind in {"resource", "data"}:
                    target = config.resources if kind == "resource" else config.data
                    for rtype, named in block.items():
                        for name, body in named.items():
                            target[(rtype, name)] = body
                elif kind == "variable":
                    config.variables.update(block)
                elif kind == "output":
                    config.outputs.update(block)
                elif kind == "locals":
                    config.locals.update(block)
                elif kind == "module":
                    config.modules.update(block)
                elif kind == "terraform":
                    config.terraform.append(block)
    return config


def ref(kind: str, name: str, attribute: str) -> str:
    """The interpolation ``${kind.name.attribute}`` as python-hcl2 prints a bare reference."""
    return "${" + f"{kind}.{name}.{attribute}" + "}"
