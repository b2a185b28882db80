"""`python -m proxy` and the `media-proxy` script, as a newcomer runs them: real processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from proxy.config import Settings
from tests.conftest import free_port, wait_healthy


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    env.update(extra)
    return env


@pytest.mark.parametrize("workers", ["1", "2"])
def test_python_m_proxy_serves_a_generated_sample(tmp_path: Path, workers: str) -> None:
    port = free_port()
    env = clean_env(PROXY_PORT=str(port), PROXY_WORKERS=workers, PROXY_LOG_LEVEL="warning")
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy"], cwd=tmp_path, env=env, stdout=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        tone = tmp_path / "media" / "audio" / "tone.wav"
        response = httpx.get(f"{url}/objects/audio/tone.wav", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        assert response.content[:4] == b"RIFF"
        assert (
            hashlib.sha256(response.content).digest() == hashlib.sha256(tone.read_bytes()).digest()
        )
        ranged = httpx.get(f"{url}/objects/random.bin", headers={"Range": "bytes=-16"}, timeout=5)
        assert ranged.content == (tmp_path / "media" / "random.bin").read_bytes()[-16:]
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0  # a clean stop, with one worker or several
    assert f"http://127.0.0.1:{port}/objects/audio/tone.wav" in out.decode()


def test_with_mounts_no_sample_is_written(tmp_path: Path) -> None:
    """PROXY_MOUNTS names its own roots: no ./media sample, no links to /objects/{key}."""
    builds = tmp_path / "builds"
    builds.mkdir()
    (builds / "app.tar").write_bytes(b"artifact")
    port = free_port()
    mounts = json.dumps({"builds": {"backend": "local", "local_root": str(builds)}})
    env = clean_env(PROXY_PORT=str(port), PROXY_MOUNTS=mounts, PROXY_LOG_LEVEL="warning")
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy"], cwd=tmp_path, env=env, stdout=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        assert httpx.get(f"{url}/objects/builds/app.tar", timeout=5).content == b"artifact"
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    assert not (tmp_path / "media").exists()
    assert "created a sample" not in out.decode()


def workers_of(pid: int) -> set[int]:
    """The uvicorn workers ``pid`` started (Linux: /proc/PID/task/*/children), not
    multiprocessing's resource tracker, which ends by itself once the parent is gone."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"multiprocessing.spawn" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(int(child))
    return found


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    ("workers", "to"),
    [("1", "process"), ("2", "process"), ("2", "group")],
    ids=["1-worker", "2-workers", "2-workers-signal-to-the-group"],
)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_drains_the_download_in_flight_and_exits_0(
    tmp_path: Path, stop: signal.Signals, workers: str, to: str
) -> None:
    """SIGTERM or SIGINT with a download in flight: it still gets every byte, then the process
    ends with status 0 (uvicorn raised the signal again after draining: status -15). With two
    workers, whether the signal reaches the parent alone (docker stop, Kubernetes) or every
    process of the group (systemd, Ctrl-C in a terminal), the workers drain and the parent
    exits 0 after them."""
    root = tmp_path / "media"
    root.mkdir()
    data = os.urandom(32 * 1024 * 1024)
    (root / "big.bin").write_bytes(data)
    port = free_port()
    temporary = tmp_path / "tmp"  # where two workers' metrics directory is made
    temporary.mkdir()
    env = clean_env(
        PROXY_PORT=str(port),
        PROXY_LOCAL_ROOT=str(root),
        PROXY_LOG_LEVEL="warning",
        PROXY_WORKERS=workers,
        TMPDIR=str(temporary),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy"], cwd=tmp_path, env=env, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        started = workers_of(process.pid)
        assert len(started) == (2 if workers == "2" else 0)
        with httpx.stream("GET", f"{url}/objects/big.bin", timeout=20) as response:
            chunks = response.iter_bytes(65536)
            received = [next(chunks)]  # the download is in flight
            if to == "group":
                os.killpg(process.pid, stop)
            else:
                process.send_signal(stop)
            received.extend(chunks)
        assert hashlib.sha256(b"".join(received)).digest() == hashlib.sha256(data).digest()
        assert process.wait(timeout=30) == 0
        assert [pid for pid in started if running(pid)] == []  # the parent went last
        assert list(temporary.glob("media-proxy-metrics-*")) == []  # removed at exit
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_an_explicit_missing_root_is_an_error(tmp_path: Path) -> None:
    env = clean_env(PROXY_LOCAL_ROOT=str(tmp_path / "nope"), PROXY_PORT=str(free_port()))
    result = subprocess.run(
        [sys.executable, "-m", "proxy"], cwd=tmp_path, env=env, capture_output=True, timeout=20
    )
    assert result.returncode != 0
    assert b"does not exist" in result.stderr
    assert not (tmp_path / "nope").exists()


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "media-proxy"
    result = subprocess.run([str(script), "--help"], capture_output=True, timeout=20)
    assert result.returncode == 0
    assert b"media-proxy" in result.stdout


def test_settings_come_from_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_CHUNK_SIZE", "1048576")
    monkeypatch.setenv("PROXY_CACHE_CONTROL", "public, max-age=5")
    monkeypatch.setenv("PROXY_FLAVOR", "sync")
    monkeypatch.setenv("PROXY_MAX_RANGES", "3")
    settings = Settings()
    assert (settings.chunk_size, settings.cache_control) == (1048576, "public, max-age=5")
    assert (settings.flavor, settings.max_ranges) == ("sync", 3)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("cache_control", "no-cache\r\nSet-Cookie: x=1"),
        ("chunk_size", "0"),
        ("flavor", "threads"),
        ("max_ranges", "0"),
    ],
)
def test_invalid_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        Settings.model_validate({name: value})
