"""The native path end to end: ``python -m proxy.devstack`` on free ports, a ranged GET through
the proxy compared by sha256 with the locally generated sample, then a stop by PID; and a start
again at once on the same ports, while the first stack's connections are still in TIME-WAIT."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxy.auth import hash_token
from proxy.devstack import (
    INTERNAL_PORTS,
    LOCAL_API_TOKEN,
    LOCAL_SIGNING_KEY_ID,
    access_control,
    port_is_free,
    s3_credentials,
)
from proxy.sample import write_sample
from tests.deploy.dockerfile import ROOT, healthcheck_command

STARTUP_SECONDS = 90
STOP_SECONDS = 60  # SeaweedFS needs about 15 s after SIGTERM
BEARER = {"Authorization": f"Bearer {LOCAL_API_TOKEN}"}  # compose's LOCAL-ONLY default token
TCP_TIME_WAIT = "06"  # the st column of /proc/net/tcp
READY = "Ctrl-C or SIGTERM stops"  # the last line the devstack prints on start


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
    """The first of ``size`` consecutive free loopback ports, below the kernel's ephemeral range:
    between the two starts, another test's outgoing connection or port-0 server (the suite runs
    in several processes) could otherwise take one of them ("ports in use", seen in CI runs)."""
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, max(first_ephemeral - size, 10_001))
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


def clean_env() -> dict[str, str]:
    """This process's environment without the variables that would configure the stack."""
    prefixes = ("PROXY_", "AWS_", "LOCAL_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


StartDevstack = Callable[[int], Devstack]


@pytest.fixture
def start_devstack(tmp_path: Path) -> Iterator[StartDevstack]:
    """Starts devstacks on ports from ``base``, all on one data directory in tmp_path; each is
    killed (with its SeaweedFS and its proxy, by PID) if a test leaves it up."""
    started: list[Devstack] = []

    def start(base: int) -> Devstack:
        log = tmp_path / f"devstack-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy.devstack", "--data-dir", str(tmp_path / "data")]
                + ["--port", str(base), "--s3-port", str(base + 1)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=clean_env(),
            )
        started.append(Devstack(process, log, base, base + 1))
        return started[-1]

    try:
        yield start
    finally:
        for stack in started:
            if stack.process.poll() is None:
                stack.process.kill()
                stack.process.wait()
            # Its children run in sessions of their own: a killed devstack leaves them behind.
            for child in ("seaweedfs", "proxy"):
                match = re.search(rf"{child}: pid ([0-9]+)", stack.output())
                if match and alive(int(match.group(1))):
                    os.kill(int(match.group(1)), signal.SIGKILL)


def wait_healthy(stack: Devstack) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert stack.process.poll() is None, f"devstack exited:\n{stack.output()}"
        if READY in stack.output():
            response = httpx.get(f"http://127.0.0.1:{stack.port}/healthz", timeout=5)
            assert response.status_code == 200
            return
        time.sleep(0.5)
    pytest.fail(f"devstack not up in {STARTUP_SECONDS} s:\n{stack.output()}")


@pytest.mark.timeout(2 * STARTUP_SECONDS + STOP_SECONDS + 60)
def test_devstack_serves_the_seeded_sample_stops_by_pid_and_starts_again_at_once(
    start_devstack: StartDevstack, tmp_path: Path
) -> None:
    # One test for the whole cycle: each stop costs SeaweedFS's 15 s graceful shutdown.
    base = free_block(2 + len(INTERNAL_PORTS))
    devstack = start_devstack(base)
    wait_healthy(devstack)
    sample = tmp_path / "sample"
    write_sample(sample)
    expected = (sample / "random.bin").read_bytes()[1000:71000]

    # Two buckets, two mounts, as in compose (issue 24); the same sample in each.
    base_url = f"http://127.0.0.1:{devstack.port}/objects/videos"
    builds = httpx.get(
        f"http://127.0.0.1:{devstack.port}/objects/builds/random.bin",
        headers={"Range": "bytes=1000-70999", **BEARER},
        timeout=30,
    )
    assert builds.status_code == 206, builds.text
    assert sha256(builds.content) == sha256(expected)
    # Access control is on, as in compose, with its LOCAL-ONLY token.
    anonymous = httpx.get(f"{base_url}/random.bin", timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    ranged = httpx.get(
        f"{base_url}/random.bin", headers={"Range": "bytes=1000-70999", **BEARER}, timeout=30
    )
    assert ranged.status_code == 206, ranged.text
    assert ranged.headers["content-range"] == "bytes 1000-70999/1048576"
    assert sha256(ranged.content) == sha256(expected)
    tone = httpx.get(
        f"{base_url}/audio/tone.wav", headers={"Range": "bytes=0-3", **BEARER}, timeout=30
    )
    assert (tone.status_code, tone.content) == (206, b"RIFF")
    assert tone.headers["content-type"] == "audio/wav"  # stored by the seed step

    # What it printed on start: where everything listens, the credentials and keys it set.
    output = devstack.output()
    s3 = devstack.s3_port
    assert f"S3 at http://127.0.0.1:{s3} (bucket media" in output
    assert "and bucket builds" in output and "/objects/builds/ (bucket builds)" in output
    for flag, offset in INTERNAL_PORTS.items():
        assert f"{flag} {s3 + offset}" in output
    assert "access key id proxy-local (LOCAL-ONLY default)" in output
    assert "secret proxy-local-secret (LOCAL-ONLY default)" in output
    assert f"http://127.0.0.1:{devstack.port} (S3 client aiobotocore)" in output
    assert f"bearer token {LOCAL_API_TOKEN} (LOCAL-ONLY default)" in output
    assert f'-H "Authorization: Bearer {LOCAL_API_TOKEN}"' in output
    signed = re.search(r"signed URL, valid for an hour: (\S+)", output)
    assert signed, output
    assert f"kid={LOCAL_SIGNING_KEY_ID}&" in signed.group(1)
    whole = httpx.get(signed.group(1), timeout=30)
    assert whole.status_code == 200, whole.text
    assert sha256(whole.content) == sha256((sample / "random.bin").read_bytes())

    # The image's HEALTHCHECK one-liner works against a real proxy.
    check = healthcheck_command()
    healthy = subprocess.run(
        check, env={**os.environ, "PROXY_PORT": str(devstack.port)}, timeout=30, check=False
    )
    assert healthy.returncode == 0

    # The seed step is idempotent: a second run changes nothing.
    env = clean_env() | {
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
    ports = {base, base + 1, *(base + 1 + offset for offset in INTERNAL_PORTS.values())}
    # A keep-alive connection that the proxy closes when it stops: its side of it then waits in
    # TIME-WAIT on the proxy's port, as after a browser or a player used the stack.
    with httpx.Client(base_url=f"http://127.0.0.1:{base}", headers=BEARER, timeout=30) as client:
        assert client.get("/objects/videos/audio/tone.wav").status_code == 200
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

    # Started again at once, on the same ports (some in TIME-WAIT) and the same data.
    assert ports & time_wait_ports(), "nothing in TIME-WAIT: the restart would prove nothing"
    second = start_devstack(base)
    wait_healthy(second)
    assert "ports in use" not in second.output()
    # The seed found them all, in both buckets.
    assert second.output().count("unchanged") == 8, second.output()
    body = httpx.get(f"{base_url}/random.bin", headers=BEARER, timeout=30)
    assert body.status_code == 200, body.text
    assert sha256(body.content) == sha256((sample / "random.bin").read_bytes())
    # Its graceful stop was tested above; the fixture kills this one by PID.


def time_wait_ports() -> set[int]:
    """Local ports of IPv4 TCP sockets in TIME-WAIT in this network namespace."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]:
        local, _, state = line.split()[1:4]
        if state == TCP_TIME_WAIT:
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("reuse", [False, True], ids=["plain", "reuseaddr"])
def test_a_listener_still_makes_a_port_busy(reuse: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        if reuse:  # as uvicorn and Go listen
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.listen()
        assert not port_is_free(port)
    assert port_is_free(port)


def test_devstack_refuses_a_port_held_by_a_listener(start_devstack: StartDevstack) -> None:
    base = free_block(2 + len(INTERNAL_PORTS))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", base + 3))
        listener.listen()
        stack = start_devstack(base)
        assert stack.process.wait(timeout=60) == 1
    assert f"ports in use on 127.0.0.1: [{base + 3}]" in stack.output()
    assert "seaweedfs: pid" not in stack.output()


def test_access_control_defaults_are_composes() -> None:
    variables, text = access_control({})
    assert json.loads(variables["PROXY_API_KEYS"]) == [
        {"name": "local-dev", "sha256": hash_token(LOCAL_API_TOKEN)}
    ]
    assert json.loads(variables["PROXY_SIGNING_KEYS"]) == {"local": "local-only-signing-secret"}
    assert variables["PROXY_SIGNING_KEY_ID"] == LOCAL_SIGNING_KEY_ID
    assert "local-dev-token (LOCAL-ONLY default)" in text


def test_access_control_overrides_and_environment_keys_are_never_printed() -> None:
    digest = hash_token("my own token")
    variables, text = access_control(
        {"LOCAL_API_KEY_SHA256": digest, "LOCAL_SIGNING_SECRET": "not-for-the-terminal"}
    )
    assert json.loads(variables["PROXY_API_KEYS"])[0]["sha256"] == digest
    assert json.loads(variables["PROXY_SIGNING_KEYS"]) == {"local": "not-for-the-terminal"}
    assert digest not in text and "not-for-the-terminal" not in text
    assert "LOCAL_API_KEY_SHA256" in text and "LOCAL_SIGNING_SECRET" in text

    # Keys of the caller's own win: the devstack adds none and names only the variables.
    own = {"PROXY_SIGNING_KEYS": '{"2026-11": "secret-from-env"}'}
    variables, text = access_control(own)
    assert variables == {}
    assert text == "from your environment: PROXY_SIGNING_KEYS (not shown)"


def test_s3_credentials_show_a_secret_only_when_it_is_the_local_default() -> None:
    assert s3_credentials({}) == (
        "access key id proxy-local (LOCAL-ONLY default), secret proxy-local-secret"
        " (LOCAL-ONLY default)"
    )
    text = s3_credentials({"AWS_ACCESS_KEY_ID": "mine", "AWS_SECRET_ACCESS_KEY": "hidden-value"})
    assert "hidden-value" not in text
    assert (
        text
        == "access key id mine (AWS_ACCESS_KEY_ID), secret from AWS_SECRET_ACCESS_KEY (not shown)"
    )
