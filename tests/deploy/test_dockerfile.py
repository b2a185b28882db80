"""The image's invariants, read from the Dockerfile: stages, user, health, signals, contents."""

from __future__ import annotations

import re

import pytest

from tests.deploy.dockerfile import (
    DOCKERFILE,
    ROOT,
    Instruction,
    exec_form,
    healthcheck_command,
    instructions,
)

BASE = "python:3.11-slim-bookworm"


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return instructions()


def final(dockerfile: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in dockerfile)
    return [i for i in dockerfile if i.stage == last]


def test_multi_stage_on_the_slim_base(dockerfile: list[Instruction]) -> None:
    froms = [i.value for i in dockerfile if i.keyword == "FROM"]
    assert froms == [f"{BASE} AS builder", f"{BASE} AS runtime"]


def test_final_stage_copies_only_the_venv_from_the_builder(dockerfile: list[Instruction]) -> None:
    copies = [i.value for i in final(dockerfile) if i.keyword in {"COPY", "ADD"}]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    runs = " ".join(i.value for i in final(dockerfile) if i.keyword == "RUN")
    assert "pip" not in runs and "apt-get" not in runs


def test_no_test_dependencies_in_the_image(dockerfile: list[Instruction]) -> None:
    text = " ".join(i.value for i in dockerfile)
    assert not re.search(r"\[[^\]]*\btest\b", text), "the test extra must not be installed"
    for tool in ("pytest", "hypothesis", "mypy", "ruff", "moto"):
        assert tool not in text
    builder_runs = " ".join(i.value for i in dockerfile if i.stage == 0 and i.keyword == "RUN")
    assert "pip uninstall --yes pip setuptools" in builder_runs


def test_runs_as_a_non_root_user(dockerfile: list[Instruction]) -> None:
    users = [i.value for i in final(dockerfile) if i.keyword == "USER"]
    assert users, "the final stage needs a USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_healthcheck_asks_healthz_with_the_standard_library(dockerfile: list[Instruction]) -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2] and "urllib.request" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")  # a syntax error would mark every container sick


def test_exec_form_command_and_sigterm(dockerfile: list[Instruction]) -> None:
    last = final(dockerfile)
    assert [i.value for i in last if i.keyword == "STOPSIGNAL"] == ["SIGTERM"]
    cmds = [i.value for i in last if i.keyword == "CMD"]
    assert len(cmds) == 1
    assert exec_form(cmds[0]) == ["python", "-m", "proxy"]
    assert not [i for i in last if i.keyword == "ENTRYPOINT"]


def test_environment_binds_all_interfaces(dockerfile: list[Instruction]) -> None:
    env = " ".join(i.value for i in final(dockerfile) if i.keyword == "ENV")
    assert "PROXY_HOST=0.0.0.0" in env.split()
    assert "PROXY_WORKERS=1" in env.split()


def test_builder_checks_uvloop_and_httptools(dockerfile: list[Instruction]) -> None:
    runs = " ".join(i.value for i in dockerfile if i.stage == 0 and i.keyword == "RUN")
    assert "import uvloop, httptools" in runs


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then allow what the build needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "proxy"}
    copied = {
        part.rstrip("/")
        for i in instructions(DOCKERFILE)
        if i.keyword == "COPY" and not i.value.startswith("--from")
        for part in i.value.split()[:-1]
    }
    assert copied <= allowed, f"COPY needs files the .dockerignore leaves out: {copied - allowed}"
