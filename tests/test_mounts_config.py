"""Mount configurations the proxy refuses at start (one line naming the mount and the option,
status 2, nothing served), and the same mounts from JSON, TOML and YAML files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Settings
from tests.test_settings_cli import assert_refused, run_proxy

S3 = {"backend": "s3", "s3_bucket": "media"}


def refused(tmp_path: Path, mounts: object, **variables: str) -> list[str]:
    result = run_proxy(cwd=tmp_path, PROXY_MOUNTS=json.dumps(mounts), **variables)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "media").exists()  # no sample written: never half-started
    return result.stderr.splitlines()


@pytest.mark.parametrize(
    ("mounts", "line"),
    [
        (
            {"videos": {"backend": "ftp"}},
            "PROXY_MOUNTS: mount 'videos': backend: Input should be 'local' or 's3'",
        ),
        (
            {"videos": {"s3_bucket": "media"}},
            "PROXY_MOUNTS: mount 'videos': backend: required (`local` or `s3`)",
        ),
        (
            {"videos": {"backend": "s3"}},
            "PROXY_MOUNTS: mount 'videos': s3_bucket: required with backend=s3",
        ),
        (
            {"builds": {"backend": "local", "local_root": "/nonexistent/builds"}},
            "PROXY_MOUNTS: mount 'builds': local_root: '/nonexistent/builds' is not a directory",
        ),
        (
            {"videos": S3, "videos/hd": S3},
            "PROXY_MOUNTS: mounts 'videos' and 'videos/hd' nest: 'videos/hd' lies inside 'videos'",
        ),
        (
            {"a/": S3},
            "PROXY_MOUNTS: mount 'a/': the name has a leading or trailing '/', an empty, '.' or "
            "'..' segment",
        ),
        (
            {"/a": S3},
            "PROXY_MOUNTS: mount '/a': the name has a leading or trailing '/', an empty, '.' or "
            "'..' segment",
        ),
        (
            {"a/../b": S3},
            "PROXY_MOUNTS: mount 'a/../b': the name has a leading or trailing '/', an empty, '.' "
            "or '..' segment",
        ),
        (
            {"..": S3},
            "PROXY_MOUNTS: mount '..': the name has a leading or trailing '/', an empty, '.' or "
            "'..' segment",
        ),
        (
            {"a b": S3},
            "PROXY_MOUNTS: mount 'a b': the name may hold letters, digits, '_', '-', '.', '~' "
            "and '/' between segments",
        ),
        (
            {"videos": {**S3, "s3_bukket": "x"}},
            "PROXY_MOUNTS: mount 'videos': s3_bukket: unknown option; did you mean s3_bucket?",
        ),
        (
            {"videos": {**S3, "port": 80}},
            "PROXY_MOUNTS: mount 'videos': port: unknown option; not a mount option",
        ),
        (
            {"videos": {**S3, "mode": "redirekt"}},
            "PROXY_MOUNTS: mount 'videos': mode: 'redirekt' is not one of proxy, redirect",
        ),
        (
            {"videos": {"backend": "local", "local_root": "/", "mode": "redirect"}},
            "PROXY_MOUNTS: mount 'videos': mode: redirect needs backend s3 (it presigns S3 URLs)",
        ),
        (
            {"videos": {**S3, "auth": "bearer"}},
            "PROXY_MOUNTS: mount 'videos': auth: 'bearer' is not one of any, keys, signed",
        ),
        (
            {"videos": {**S3, "public": "yes"}},
            "PROXY_MOUNTS: mount 'videos': public: 'yes' is not true or false",
        ),
        (
            {"videos": {**S3, "s3_pool_size": 0}},
            "PROXY_MOUNTS: mount 'videos': s3_pool_size: Input should be greater than or equal "
            "to 1",
        ),
        (
            {"videos": {**S3, "cache_control": "a\r\nb"}},
            "PROXY_MOUNTS: mount 'videos': cache_control: must be visible ASCII",
        ),
        (
            {"builds": {"backend": "local", "local_root": "/", "cache_dir": "/tmp"}},
            "PROXY_MOUNTS: mount 'builds': cache_dir: the cache is for S3 objects; it needs "
            "backend=s3",
        ),
        ({"videos": "s3"}, "PROXY_MOUNTS: mount 'videos': its options must be an object"),
        (
            {"a": {**S3, "cache_dir": "/tmp/c"}, "b": {**S3, "cache_dir": "/tmp/c/"}},
            "PROXY_MOUNTS: mount 'b': cache_dir: mount 'a' has it already; each mount needs a "
            "cache directory of its own",
        ),
        ({}, "PROXY_MOUNTS: expected an object of mounts, at least one"),
    ],
)
def test_a_bad_mount_stops_the_start_with_one_line(
    tmp_path: Path, mounts: object, line: str
) -> None:
    assert refused(tmp_path, mounts) == [line]


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    lines = refused(
        tmp_path,
        {"a": {"backend": "s3"}, "b": {"backend": "local", "local_root": "/nope"}},
        PROXY_API_KEYS=json.dumps([{"name": "k", "sha256": "0" * 64, "mounts": ["c"]}]),
    )
    assert lines == [
        "PROXY_MOUNTS: mount 'a': s3_bucket: required with backend=s3",
        "PROXY_MOUNTS: mount 'b': local_root: '/nope' is not a directory",
        "PROXY_API_KEYS: key 'k': mounts: 'c' names no mount",
    ]


def test_a_key_scoped_to_mounts_needs_mounts(tmp_path: Path) -> None:
    keys = json.dumps([{"name": "k", "sha256": "0" * 64, "mounts": ["videos"]}])
    result = run_proxy(cwd=tmp_path, PROXY_API_KEYS=keys)
    assert_refused(result, "PROXY_API_KEYS: key 'k': mounts: 'videos' names no mount")


def test_mounts_and_a_mounts_file_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "mounts.json").write_text(json.dumps({"v": S3}))
    lines = refused(tmp_path, {"v": S3}, PROXY_MOUNTS_FILE=str(tmp_path / "mounts.json"))
    assert lines == ["PROXY_MOUNTS_FILE: set PROXY_MOUNTS or PROXY_MOUNTS_FILE, not both"]


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("m.yaml", "a: [\n", "not valid YAML (while parsing a flow node)"),
        ("m.toml", "[a\n", "not valid TOML (Expected ']' at the end of a table declaration"),
        ("m.json", "{", "not valid JSON (Expecting property name enclosed in double quotes"),
        ("m.ini", "[a]", "the file name must end in .json, .toml, .yaml or .yml"),
        ("absent.json", None, "cannot be read (FileNotFoundError)"),
    ],
)
def test_an_unreadable_mounts_file_is_refused(
    tmp_path: Path, name: str, text: str | None, line: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    result = run_proxy(cwd=tmp_path, PROXY_MOUNTS_FILE=str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (got,) = result.stderr.splitlines()
    assert got.startswith(f"PROXY_MOUNTS_FILE: {path}: {line}"), got


MOUNTS: dict[str, Any] = {
    "videos": {
        "backend": "s3",
        "s3_bucket": "media",
        "s3_prefix": "v",
        "s3_client": "aiobotocore",
        "mode": "redirect",
        "cache_control": "max-age=60",
    },
    "builds": {"backend": "local", "local_root": "/", "flavor": "sync", "public": True},
}
TOML = """
[videos]
backend = "s3"
s3_bucket = "media"
s3_prefix = "v"
s3_client = "aiobotocore"
mode = "redirect"
cache_control = "max-age=60"

[builds]
backend = "local"
local_root = "/"
flavor = "sync"
public = true
"""
YAML = """
videos:
  backend: s3
  s3_bucket: media
  s3_prefix: v
  s3_client: aiobotocore
  mode: redirect
  cache_control: max-age=60
builds: {backend: local, local_root: /, flavor: sync, public: true}
"""


def described(settings: Settings) -> list[tuple[Any, ...]]:
    return [
        (
            mount.name,
            mount.public,
            mount.redirect,
            mount.settings.storage_options(),
            mount.settings.cache_control,
        )
        for mount in settings.mount_list()
    ]


@pytest.mark.parametrize(
    ("name", "text"),
    [("m.json", json.dumps(MOUNTS)), ("m.toml", TOML), ("m.yaml", YAML), ("m.yml", YAML)],
)
def test_a_mounts_file_in_each_format_means_what_proxy_mounts_does(
    tmp_path: Path, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    from_file = Settings.model_validate({"mounts_file": path})
    from_variable = Settings.model_validate({"mounts": MOUNTS})
    assert described(from_file) == described(from_variable)
    assert [mount.name for mount in from_file.mount_list()] == ["videos", "builds"]


def test_without_mounts_the_proxy_variables_are_one_mount_at_the_root(tmp_path: Path) -> None:
    settings = Settings.model_validate({"local_root": tmp_path})
    (mount,) = settings.mount_list()
    assert (mount.name, mount.path, mount.settings, mount.public) == ("", "", settings, False)


def test_a_mount_takes_the_global_settings_it_does_not_set(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "s3_endpoint_url": "http://s3.internal:9000",
            "s3_region": "eu-west-1",
            "cache_control": "no-store",
            "s3_bucket": "global-bucket",
            "mounts": {
                "a": {"backend": "s3", "s3_bucket": "a"},
                "b": {"backend": "s3", "s3_bucket": "b", "cache_control": "max-age=9"},
            },
        }
    )
    a, b = (mount.settings for mount in settings.mount_list())
    assert (a.s3_endpoint_url, a.s3_region, a.cache_control) == (
        "http://s3.internal:9000",
        "eu-west-1",
        "no-store",
    )
    assert (a.s3_bucket, b.s3_bucket, b.cache_control) == ("a", "b", "max-age=9")


def test_the_proxy_process_serves_the_mounts_of_a_yaml_file(tmp_path: Path) -> None:
    import hashlib
    import signal
    import subprocess
    import sys

    import httpx

    from tests.conftest import free_port, wait_healthy
    from tests.test_settings_cli import clean_env

    videos, builds = tmp_path / "videos", tmp_path / "builds"
    videos.mkdir()
    builds.mkdir()
    clip, artifact = bytes(range(256)) * 400, b"build artifact\n" * 100
    (videos / "clip.mp4").write_bytes(clip)
    (builds / "app.tar").write_bytes(artifact)
    (tmp_path / "mounts.yaml").write_text(
        f"videos: {{backend: local, local_root: {videos}, flavor: async}}\n"
        f"builds: {{backend: local, local_root: {builds}, flavor: sync}}\n"
    )
    port = free_port()
    env = clean_env(
        PROXY_MOUNTS_FILE=str(tmp_path / "mounts.yaml"),
        PROXY_PORT=str(port),
        PROXY_LOG_LEVEL="warning",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        for path, data in [("videos/clip.mp4", clip), ("builds/app.tar", artifact)]:
            response = httpx.get(f"{url}/objects/{path}", headers={"Range": "bytes=7-"}, timeout=5)
            assert response.status_code == 206, path
            digest = hashlib.sha256(response.content).hexdigest()
            assert digest == hashlib.sha256(data[7:]).hexdigest(), path
        ready = httpx.get(f"{url}/readyz", timeout=5).json()
        assert ready == {"status": "ready", "mounts": {"videos": "ready", "builds": "ready"}}
        assert httpx.get(f"{url}/objects/clip.mp4", timeout=5).status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
