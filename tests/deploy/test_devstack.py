"""The native path end to end: ``python -m proxy.devstack`` on free ports, a ranged GET through
the proxy compared by sha256 with the locally generated sample, then a stop by PID."""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxy.devstack import INTERNAL_PORTS
from proxy.sample import write_sample
from tests.deploy.dockerfile import ROOT, healthcheck_command

STARTUP_SECONDS = 90
STOP_SECONDS = 60  # SeaweedFS needs about 15 s after SIGTERM


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_block(size: int) -> int:
    """The first of ``size`` consecutive free loopback ports."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000)
        if all(free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no block of free ports")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass(frozen=True)
class Devstack:
    process: subprocess.Popen[bytes]
    log: Path
    port: int
    s3_port: int

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def weed_pid(self) -> int:
        match = re.search(r"seaweedfs: pid ([0-9]+)", self.output())
        assert match, self.output()
        return int(match.group(1))


@pytest.fixture
def devstack(tmp_path: Path) -> Iterator[Devstack]:
    """A running devstack on free ports, its data in tmp_path; killed if a test leaves it up."""
    base = free_block(2 + len(INTERNAL_PORTS))
    log = tmp_path / "devstack.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "AWS_"))}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy.devstack", "--data-dir", str(tmp_path / "data")]
            + ["--port", str(base), "--s3-port", str(base + 1)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    stack = Devstack(process, log, base, base + 1)
    try:
        yield stack
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        match = re.search(r"seaweedfs: pid ([0-9]+)", stack.output())
        if match and alive(int(match.group(1))):
            os.kill(int(match.group(1)), signal.SIGKILL)


def wait_healthy(stack: Devstack) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert stack.process.poll() is None, f"devstack exited:\n{stack.output()}"
        if "proxy: pid" in stack.output():
            response = httpx.get(f"http://127.0.0.1:{stack.port}/healthz", timeout=5)
            assert response.status_code == 200
            return
        time.sleep(0.5)
    pytest.fail(f"devstack not up in {STARTUP_SECONDS} s:\n{stack.output()}")


@pytest.mark.timeout(STARTUP_SECONDS + STOP_SECONDS + 60)
def test_devstack_serves_the_seeded_sample_and_stops_by_pid(
    devstack: Devstack, tmp_path: Path
) -> None:
    wait_healthy(devstack)
    sample = tmp_path / "sample"
    write_sample(sample)
    expected = (sample / "random.bin").read_bytes()[1000:71000]

    base = f"http://127.0.0.1:{devstack.port}/objects"
    ranged = httpx.get(f"{base}/random.bin", headers={"Range": "bytes=1000-70999"}, timeout=30)
    assert ranged.status_code == 206, ranged.text
    assert ranged.headers["content-range"] == "bytes 1000-70999/1048576"
    assert sha256(ranged.content) == sha256(expected)
    tone = httpx.get(f"{base}/audio/tone.wav", headers={"Range": "bytes=0-3"}, timeout=30)
    assert (tone.status_code, tone.content) == (206, b"RIFF")
    assert tone.headers["content-type"] == "audio/wav"  # stored by the seed step

    # The image's HEALTHCHECK one-liner works against a real proxy.
    check = healthcheck_command()
    healthy = subprocess.run(
        check, env={**os.environ, "PROXY_PORT": str(devstack.port)}, timeout=30, check=False
    )
    assert healthy.returncode == 0

    # The seed step is idempotent: a second run changes nothing.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "AWS_"))}
    env |= {
        "PROXY_S3_BUCKET": "media",
        "PROXY_S3_ENDPOINT_URL": f"http://127.0.0.1:{devstack.s3_port}",
        "PROXY_S3_ADDRESSING_STYLE": "path",
        "AWS_ACCESS_KEY_ID": "proxy-local",
        "AWS_SECRET_ACCESS_KEY": "proxy-local-secret",
    }
    again = subprocess.run(
        [sys.executable, "-m", "proxy.seed"], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("unchanged") == 4 and "uploaded" not in again.stdout

    weed = devstack.weed_pid()
    assert alive(weed)
    devstack.process.send_signal(signal.SIGTERM)
    assert devstack.process.wait(timeout=STOP_SECONDS) == 0, devstack.output()
    assert not alive(weed), "devstack left SeaweedFS running"
    assert "devstack stopped" in devstack.output()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{devstack.port}/healthz", timeout=2)
    failed = subprocess.run(
        check,
        env={**os.environ, "PROXY_PORT": str(devstack.port)},
        timeout=30,
        check=False,
        capture_output=True,
    )
    assert failed.returncode != 0
