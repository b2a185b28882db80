"""Settings as a newcomer meets them: errors naming the variable, `--help`, `settings`, options.

Real processes (`python -m proxy`, uvicorn's own command line), as a person would run them.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from proxy.config import Settings
from proxy.settingsdoc import env_name, markdown_table
from tests.conftest import free_port, wait_healthy

README = Path(__file__).resolve().parents[1] / "README.md"
UVICORN = Path(sys.executable).parent / "uvicorn"
VALID_SHA256 = "0" * 64


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PROXY_")}
    env.update(extra)
    return env


def run_proxy(
    *args: str, cwd: Path, stdin: str = "", **variables: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd,
        env=clean_env(**variables),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *lines: str) -> None:
    """Status 2, no traceback, exactly these lines (each problem on one) on stderr."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == list(lines)
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("variables", "lines"),
    [
        ({"PROXY_PORT": "abc"}, ["PROXY_PORT: 'abc' is not an integer between 0 and 65535"]),
        ({"PROXY_PORT": "70000"}, ["PROXY_PORT: '70000' is not an integer between 0 and 65535"]),
        (
            {"PROXY_BAKEND": "s3"},
            ["PROXY_BAKEND: unknown setting; did you mean PROXY_BACKEND?"],
        ),
        (
            {"PROXY_NOT_A_THING": "1"},
            ["PROXY_NOT_A_THING: unknown setting; `python -m proxy settings` lists them"],
        ),
        (
            {"PROXY_API_KEYS": '[{"name": "ci" "sha256": "' + VALID_SHA256 + '"}]'},
            [
                "PROXY_API_KEYS: not valid JSON (Expecting ',' delimiter: line 1 column 16 "
                '(char 15)); expected a JSON list of {"name": ..., "sha256": <64 hex digits>, '
                '"prefix": ...}'
            ],
        ),
        (
            {"PROXY_API_KEYS": '[{"name": "ci", "sha256": "abc"}]'},
            [
                "PROXY_API_KEYS: item 0, sha256: String should match pattern '^[0-9a-f]{64}$'; "
                'expected a JSON list of {"name": ..., "sha256": <64 hex digits>, "prefix": ...}'
            ],
        ),
        ({"PROXY_FLAVOR": "threads"}, ["PROXY_FLAVOR: 'threads' is not one of sync, async"]),
        (
            {"PROXY_CACHE_MAX_SIZE": "10XB"},
            [
                "PROXY_CACHE_MAX_SIZE: '10XB' is not a size such as 20GiB, 500MB or a number of "
                "bytes, at least 16MiB"
            ],
        ),
        (
            {"PROXY_CACHE_CONTROL": "no-cache\r\nSet-Cookie: a=b"},
            [
                "PROXY_CACHE_CONTROL: 'no-cache\\r\\nSet-Cookie: a=b' is not a header value in "
                "visible ASCII"
            ],
        ),
        (
            {"PROXY_UPLOAD_SPOOL_DIR": "/nonexistent/spool"},
            [
                "PROXY_UPLOAD_SPOOL_DIR: '/nonexistent/spool' is not an existing directory this "
                "process can write to"
            ],
        ),
        ({"PROXY_BACKEND": "s3"}, ["PROXY_S3_BUCKET: required with PROXY_BACKEND=s3"]),
        (  # every problem at once: unknown names first, then values in the settings' order
            {"PROXY_WORKERS": "0", "PROXY_S3_TIMEOUT": "5", "PROXY_ACCESS_LOG": "maybe"},
            [
                "PROXY_S3_TIMEOUT: unknown setting; did you mean PROXY_S3_READ_TIMEOUT?",
                "PROXY_ACCESS_LOG: 'maybe' is not true or false",
                "PROXY_WORKERS: '0' is not an integer between 1 and 64",
            ],
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_variable(
    tmp_path: Path, variables: dict[str, str], lines: list[str]
) -> None:
    assert_refused(run_proxy(cwd=tmp_path, **variables), *lines)
    assert not (tmp_path / "media").exists()  # nothing was started or created


def test_a_secret_in_a_bad_setting_is_never_printed(tmp_path: Path) -> None:
    secret = "hunter2-very-secret"
    result = run_proxy(cwd=tmp_path, PROXY_SIGNING_KEYS=f'["{secret}"]')
    assert_refused(
        result,
        "PROXY_SIGNING_KEYS: Input should be a valid dictionary; expected a JSON object "
        '{"key id": "secret"}',
    )
    broken = run_proxy(cwd=tmp_path, PROXY_SIGNING_KEYS='{"k": "' + secret)
    assert broken.returncode == 2 and "PROXY_SIGNING_KEYS: not valid JSON" in broken.stderr
    assert secret not in broken.stderr + result.stderr


def test_a_uvicorn_worker_refuses_bad_settings_the_same_way(tmp_path: Path) -> None:
    # The factory reads the settings in each worker: the Dockerfile-less deployments run it so.
    result = subprocess.run(
        [str(UVICORN), "--factory", "proxy.app:create_app", "--port", str(free_port())],
        cwd=tmp_path,
        env=clean_env(PROXY_PORT="abc"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "PROXY_PORT: 'abc' is not an integer between 0 and 65535" in result.stderr.splitlines()


def test_hash_key_reads_no_settings(tmp_path: Path) -> None:
    result = run_proxy("hash-key", cwd=tmp_path, stdin="tok\n", PROXY_PORT="abc", PROXY_BAKEND="x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hashlib.sha256(b"tok").hexdigest()


def test_help_is_a_command_line_help(tmp_path: Path) -> None:
    result = run_proxy("--help", cwd=tmp_path)
    assert result.returncode == 0
    out = result.stdout
    assert out.startswith("usage: python -m proxy ")
    for word in ("--host", "--port", "--root", "--backend", "--workers", "--reload", "--version"):
        assert word in out
    for command in ("serve", "settings", "sign", "hash-key"):
        assert f"\n    {command} " in out
    assert "python -m proxy settings` lists them all" in out
    assert "Traceback" not in result.stderr
    version = run_proxy("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip().startswith("python -m proxy 0.")


def test_a_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    result = run_proxy("--port", "abc", cwd=tmp_path)
    assert result.returncode == 2
    assert "argument --port: 'abc' is not an integer between 0 and 65535" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_lists_every_setting_with_secrets_masked(tmp_path: Path) -> None:
    secret = "s3cr3t-signing-value"
    result = run_proxy(
        "--port",
        "9123",
        "settings",
        cwd=tmp_path,
        PROXY_PORT="8001",
        PROXY_CACHE_CONTROL="public, max-age=5",
        PROXY_SIGNING_KEYS=f'{{"2026-11": "{secret}"}}',
        PROXY_API_KEYS=f'[{{"name": "ci", "sha256": "{VALID_SHA256}", "prefix": "a/"}}]',
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    headlines = [line for line in out.splitlines() if line.startswith("PROXY_")]
    assert [line.split(" = ")[0] for line in headlines] == [
        env_name(field) for field in Settings.model_fields
    ]
    assert "PROXY_PORT = 9123  (set; default 8000)" in headlines  # the option beat the variable
    assert "PROXY_CACHE_CONTROL = public, max-age=5  (set; default no-cache)" in headlines
    assert "PROXY_BACKEND = local  (default)" in headlines
    assert 'PROXY_SIGNING_KEYS = {"2026-11": "********"}  (set; default none)' in headlines
    assert "PROXY_API_KEYS = ci (prefix 'a/')  (set; default none)" in headlines
    assert secret not in out and VALID_SHA256 not in out
    assert "Accepts an integer between 0 and 65535." in out


def test_the_readme_table_is_the_settings_table(tmp_path: Path) -> None:
    generated = run_proxy("settings", "--markdown", cwd=tmp_path)
    assert generated.returncode == 0
    assert generated.stdout == markdown_table()
    assert markdown_table() in README.read_text(encoding="utf-8"), (
        "README's configuration table is stale: paste `python -m proxy settings --markdown`"
    )
    rows = [line for line in markdown_table().splitlines() if line.startswith("| `PROXY_")]
    assert len(rows) == len(Settings.model_fields)


def test_options_override_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    clip = os.urandom(70_000)
    (root / "clip.mp4").write_bytes(clip)
    port, ignored = free_port(), free_port()
    # The environment says S3 on another port: --root and --port win.
    env = clean_env(
        PROXY_BACKEND="s3",
        PROXY_S3_BUCKET="nope",
        PROXY_PORT=str(ignored),
        PROXY_LOG_LEVEL="warning",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--port", str(port), "--root", str(root)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        response = httpx.get(f"{url}/objects/clip.mp4", headers={"Range": "bytes=5-"}, timeout=5)
        assert response.status_code == 206
        assert response.headers["content-type"] == "video/mp4"
        assert hashlib.sha256(response.content).digest() == hashlib.sha256(clip[5:]).digest()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{ignored}/healthz", timeout=2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def test_reload_serves_and_stops(tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.txt").write_bytes(b"hello\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--reload", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(PROXY_LOG_LEVEL="warning"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        assert httpx.get(f"{url}/objects/a.txt", timeout=5).content == b"hello\n"
    finally:
        process.send_signal(signal.SIGTERM)  # the reloader stops its server process
        _, err = process.communicate(timeout=20)
    assert b"Traceback" not in err
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_reload_with_workers_is_refused(tmp_path: Path) -> None:
    result = run_proxy("--reload", "--workers", "2", cwd=tmp_path)
    assert_refused(result, "--reload runs one process: drop --workers / PROXY_WORKERS")
