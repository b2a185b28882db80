"""The servers under test: three proxy flavours, the two S3 ones again with the slice cache on,
and four peers, each on its own loopback port.

Peers: nginx (sendfile, one worker, no access log: the ceiling for local disk), Starlette
FileResponse under uvicorn, aiohttp web.FileResponse, and SeaweedFS itself (the S3 ceiling).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from procs import LOOPBACK, free_port, spawn, stop, wait_http
from seaweed import S3Site

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEPLOY_TIMEOUT_S = 900.0
BIG = "big.bin"
COALESCE = "coalesce.bin"  # the coalesce scenario's object (COALESCE_SIZE bytes)
COALESCE_SIZE = 64 * 1024 * 1024
TINY = "tiny.txt"
BASELINE = "@baseline"  # name suffix of a target on the --baseline build
# A variant's environment value that stands for a new, empty directory made for each start of
# each instance (the relayed one too) and deleted when it stops: a cache that starts cold.
FRESH_DIR = "<fresh directory>"
# In a target's environment: replaced by the data directory and the bucket of the run.
DATA_DIR = "<data directory>"
BUCKET = "<bucket>"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Target:
    """A server to measure. prefix + key is an object's URL path."""

    name: str
    role: Literal["proxy", "peer"]
    backend: Literal["local", "s3"]
    prefix: str
    health_path: str | None = None  # only the proxy has /healthz
    kind: str = ""  # the target this one is a variant of ("" for itself): starter, S3 client
    env: tuple[tuple[str, str], ...] = ()  # a variant's extra environment
    build: Literal["head", "baseline"] = "head"  # which proxy build runs it (see --baseline)
    scenarios: tuple[str, ...] = ()  # the only scenarios that measure it (empty: every one)

    @property
    def base(self) -> str:
        return self.kind or self.name


def variant(
    target: Target,
    suffix: str,
    *,
    env: tuple[tuple[str, str], ...] = (),
    build: Literal["head", "baseline"] = "head",
) -> Target:
    """target under another name, with more environment or on the baseline build."""
    return replace(
        target, name=target.name + suffix, kind=target.base, env=target.env + env, build=build
    )


def uses_mounts(target: Target) -> bool:
    """Whether the target runs the proxy with PROXY_MOUNTS (no --baseline build before it)."""
    return any(name == "PROXY_MOUNTS" for name, _ in target.env)


def has_cache(target: Target) -> bool:
    """Whether the target runs the proxy with its slice cache on (PROXY_CACHE_DIR set)."""
    return any(name == "PROXY_CACHE_DIR" for name, _ in target.env)


def compared(targets: Sequence[Target]) -> list[tuple[str, str]]:
    """The report's extra ratio rows (first / second): today / baseline for each --baseline
    target, cache / no cache for each cache target whose uncached twin is measured too."""
    names = {target.name for target in targets}
    pairs = []
    for target in targets:
        if target.build == "baseline":
            pairs.append((target.name.removesuffix(BASELINE), target.name))
        elif has_cache(target) and target.base in names:
            pairs.append((target.name, target.base))
    return pairs


@dataclass(frozen=True, slots=True)
class Site:
    """Where the data is: a local directory, and (when started) the S3 bucket."""

    data_dir: Path
    work_dir: Path
    s3: S3Site | None
    python: str  # the proxies' interpreter (see deploy_python)
    baseline_python: str | None = None  # the --baseline build's interpreter


@dataclass(slots=True)
class Server:
    target: Target
    port: int
    process: subprocess.Popen[bytes] | None  # None: not ours to stop (SeaweedFS)
    fresh_dir: Path | None = None  # FRESH_DIR of this start, deleted on stop

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
        if self.fresh_dir is not None:
            shutil.rmtree(self.fresh_dir, ignore_errors=True)  # a warm cache holds the object


PROXY_LOCAL = Target("proxy-local", "proxy", "local", "/objects/", "/healthz")
PROXY_S3_AIO = Target("proxy-s3-aio", "proxy", "s3", "/objects/", "/healthz")
PROXY_S3_BOTO3 = Target("proxy-s3-boto3", "proxy", "s3", "/objects/", "/healthz")
NGINX = Target("nginx", "peer", "local", "/")
STARLETTE = Target("starlette", "peer", "local", "/")
AIOHTTP = Target("aiohttp", "peer", "local", "/")
S3_DIRECT = Target("s3-direct", "peer", "s3", "/bench/")
# The read-through slice cache on (default slice size and validity), large enough for every
# object, in a new directory for each start.
CACHE_ENV = (("PROXY_CACHE_DIR", FRESH_DIR), ("PROXY_CACHE_MAX_SIZE", "4GiB"))
PROXY_S3_AIO_CACHE = variant(PROXY_S3_AIO, "-cache", env=CACHE_ENV)
PROXY_S3_BOTO3_CACHE = variant(PROXY_S3_BOTO3, "-cache", env=CACHE_ENV)
# Issue 24: the proxy with three mounts, ranges served by the last one (against proxy-local,
# one backend at the root, in the same run), and a redirecting S3 mount (proxy CPU per 307).
MOUNTS_ENV = (
    (
        "PROXY_MOUNTS",
        json.dumps(
            {name: {"backend": "local", "local_root": DATA_DIR} for name in ("a", "b", "c")}
        ),
    ),
)
PROXY_LOCAL_MOUNTS = replace(
    variant(PROXY_LOCAL, "-mounts", env=MOUNTS_ENV), prefix="/objects/c/", scenarios=("ranges",)
)
# Issue 26: the local backend's blocking flavour (`def` endpoints in the threadpool), in ranges
# only: its per-request path differs from proxy-local's (a thread hop per request).
PROXY_LOCAL_SYNC = replace(
    variant(PROXY_LOCAL, "-sync", env=(("PROXY_FLAVOR", "sync"),)), scenarios=("ranges",)
)
REDIRECT_ENV = (
    ("PROXY_MOUNTS", json.dumps({"r": {"backend": "s3", "s3_bucket": BUCKET, "mode": "redirect"}})),
)
PROXY_S3_REDIRECT = replace(
    variant(PROXY_S3_AIO, "-redirect", env=REDIRECT_ENV),
    prefix="/objects/r/",
    scenarios=("redirect",),
)
TARGETS = [
    PROXY_LOCAL,
    PROXY_LOCAL_MOUNTS,
    PROXY_LOCAL_SYNC,
    PROXY_S3_REDIRECT,
    PROXY_S3_AIO,
    PROXY_S3_BOTO3,
    PROXY_S3_AIO_CACHE,
    PROXY_S3_BOTO3_CACHE,
    NGINX,
    STARLETTE,
    AIOHTTP,
    S3_DIRECT,
]

_S3_CLIENTS = {PROXY_S3_AIO.name: "aiobotocore", PROXY_S3_BOTO3.name: "boto3"}


def _proxy_env(
    target: Target, site: Site, port: int, s3_port: int | None, fresh_dir: Path | None = None
) -> dict[str, str]:
    # Only the cache targets cache, whatever the calling shell exports.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_CACHE_")}
    if target.build == "baseline":
        # Its own build only: with the tests' `export PYTHONPATH=$PWD` it ran the working tree.
        inherited.pop("PYTHONPATH", None)
    env = {
        **inherited,
        "PROXY_PORT": str(port),
        "PROXY_LOG_LEVEL": "warning",
        # Every feature on, as the targets require: conditionals, metrics and the JSON access
        # log (written to the server's log file, like a container's stdout).
        "PROXY_ACCESS_LOG": "true",
        "PROXY_BACKEND": target.backend,
    }
    if target.build == "head":  # a --baseline build may predate the setting (issue 28)
        env["PROXY_LISTING"] = "true"
    if target.backend == "local":
        env["PROXY_LOCAL_ROOT"] = str(site.data_dir)
    elif site.s3 is not None and s3_port is not None:
        env |= {
            "PROXY_S3_CLIENT": _S3_CLIENTS[target.base],
            "PROXY_S3_BUCKET": site.s3.bucket,
            "PROXY_S3_ENDPOINT_URL": f"http://{LOOPBACK}:{s3_port}",
            "PROXY_S3_ADDRESSING_STYLE": "path",
            "PROXY_S3_REGION": "us-east-1",
        }
    for name, value in target.env:
        if value == FRESH_DIR and fresh_dir is None:
            raise ValueError(f"{target.name}: {name} needs a fresh directory")
        value = value.replace(DATA_DIR, str(site.data_dir))
        if site.s3 is not None:
            value = value.replace(BUCKET, site.s3.bucket)
        env[name] = str(fresh_dir) if value == FRESH_DIR else value
    return env


def proxy_command(python: str) -> list[str]:
    """``python -m proxy`` for the proxy installed in ``python``'s environment. ``-P``: without
    it, ``-m`` puts the working directory first on sys.path, and run from the repository every
    build (--baseline's too) ran the working tree's ``proxy/``."""
    return [python, "-P", "-m", "proxy"]


def start_proxy(target: Target, site: Site, s3_port: int | None = None) -> Server:
    """The proxy (`python -m proxy`); S3 flavours talk to s3_port (default: SeaweedFS)."""
    if s3_port is None and site.s3 is not None:
        s3_port = site.s3.port
    port = free_port()
    suffix = "" if site.s3 is None or s3_port == site.s3.port else "-relayed"
    log = site.work_dir / f"{target.name}{suffix}.log"
    python = site.baseline_python if target.build == "baseline" else site.python
    if python is None:
        raise RuntimeError(f"{target.name}: no baseline build")
    fresh_dir = None
    if any(value == FRESH_DIR for _, value in target.env):
        parent = site.work_dir / "fresh"
        parent.mkdir(exist_ok=True)
        fresh_dir = Path(tempfile.mkdtemp(prefix=f"{target.name}{suffix}-", dir=parent))
    try:
        process = spawn(
            proxy_command(python), log, _proxy_env(target, site, port, s3_port, fresh_dir)
        )
    except BaseException:
        if fresh_dir is not None:
            shutil.rmtree(fresh_dir, ignore_errors=True)
        raise
    return _ready(Server(target, port, process, fresh_dir), log)


# A pure-Python loop (calls, attributes, dicts, f-strings): what an interpreter build changes.
CALIBRATION = """
import platform, time
class Box:
    __slots__ = ("value",)
    def __init__(self, value): self.value = value
def step(box, table, index):
    table[index % 97] = f"{box.value}-{index}"
    return box.value + len(table)
best = None
for _ in range(3):
    started = time.process_time()
    box, table, total = Box(1), {}, 0
    for index in range(150_000):
        total += step(box, table, index)
    spent = time.process_time() - started
    best = spent if best is None else min(best, spent)
print(best, platform.python_version())
"""
CALIBRATION_TIMEOUT_S = 60.0


Interpreter = tuple[str, float, str]  # its path, its seconds on CALIBRATION, its version


def interpreters() -> list[Interpreter]:
    """The builds of this Python version found here (the running one, the distribution's),
    fastest first, each with its seconds on ``CALIBRATION`` and its version.

    The deployed proxy runs the image's CPython, built with profile-guided and link-time
    optimization (``python:3.11-slim``); a development machine's own build may be a plain one
    (pyenv's default), ~25% slower on a 64 KiB range (docs/design.md, "The benchmark's
    interpreter"). The fastest build stands for the deployed one."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable]
    found = shutil.which(name, path="/usr/local/bin:/usr/bin:/bin")
    if found is not None and os.path.realpath(found) != os.path.realpath(sys.executable):
        candidates.append(found)
    timed = []
    for python in candidates:
        try:
            done = subprocess.run(
                [python, "-I", "-c", CALIBRATION],
                capture_output=True,
                text=True,
                timeout=CALIBRATION_TIMEOUT_S,
                check=True,
            )
            seconds, version = done.stdout.split()
            timed.append((python, float(seconds), version))
        except (OSError, ValueError, subprocess.SubprocessError):
            continue  # not runnable here: not a candidate
    running = (sys.executable, float("nan"), ".".join(map(str, sys.version_info[:3])))
    return sorted(timed, key=lambda item: item[1]) or [running]


def deploy_python(
    venv: Path, source: Path = ROOT, bases: Sequence[Interpreter] | None = None
) -> tuple[str, str]:
    """The proxy's interpreter: a new virtual environment `venv` with the proxy (from source)
    installed as the README's run command installs it (`pip install .`: the runtime
    dependencies only), made from the first of ``bases`` (default: ``interpreters()``) that
    can make one. The Python peers (Starlette, aiohttp) run on it too: their ratios compare
    the same build.

    The test environment also holds the test tools, and aiobotocore imports httpx when it is
    installed (with rich and click: ~6 MB more in the proxy's process, which a deployed proxy
    does not carry). Returns (python, what it is); the running Python when pip fails.
    """
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    timed = list(bases) if bases is not None else interpreters()
    reason = ""
    for base, seconds, version in timed:
        shutil.rmtree(venv, ignore_errors=True)
        steps = [[base, "-m", "venv", str(venv)], [*pip, str(source)]]
        try:
            for step in steps:
                subprocess.run(
                    step, check=True, capture_output=True, text=True, timeout=DEPLOY_TIMEOUT_S
                )
        except (OSError, subprocess.SubprocessError) as error:
            reason = getattr(error, "stderr", None) or str(error)
            continue
        others = "; ".join(f"{path} {spent:.2f} s" for path, spent, _ in timed if path != base)
        built = f"{base} (Python {version}; calibration {seconds:.2f} s"
        return str(python), (
            f"pip install . in a new virtual environment of {built}"
            + (f"; also found: {others})" if others else ")")
        )
    return sys.executable, f"the running Python (pip install . failed: {reason[-200:]})"


def nginx_config(root: Path, prefix: Path, port: int) -> str:
    """One worker, sendfile, no access log; every path inside prefix (runs as root or not)."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read a 0700 temp dir
    temp_paths = "".join(
        f"    {name}_temp_path {prefix / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\ndaemon off;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "    access_log off;\n    sendfile on;\n"
        # No tcp_nopush: with it, 64 KiB ranges on loopback often stalled for a delayed ACK
        # (p50 44 ms, 800 req/s instead of 2.5 ms, 5,000 req/s; measured with wrk).
        "    keepalive_requests 1000000;\n"  # uvicorn and aiohttp do not limit them either
        "    default_type application/octet-stream;\n"
        f"{temp_paths}"
        f"    server {{ listen {LOOPBACK}:{port}; root {root}; }}\n"
        "}\n"
    )


def start_nginx(target: Target, site: Site) -> Server:
    prefix = site.work_dir / "nginx"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(site.data_dir, prefix, port), encoding="ascii")
    binary = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin") or "nginx"
    log = site.work_dir / "nginx.log"
    command = [binary, "-p", f"{prefix}/", "-e", str(prefix / "error.log"), "-c", str(config)]
    return _ready(Server(target, port, spawn(command, log)), log)


def _start_script(script: str) -> Callable[[Target, Site], Server]:
    def start(target: Target, site: Site) -> Server:
        port = free_port()
        log = site.work_dir / f"{target.name}.log"
        # The proxies' interpreter (deploy_python): the same build for every Python server.
        command = [site.python, str(HERE / "peers" / script), str(site.data_dir), str(port)]
        return _ready(Server(target, port, spawn(command, log)), log)

    return start


def start_s3_direct(target: Target, site: Site) -> Server:
    """SeaweedFS is already running (seaweed.py owns and stops it)."""
    if site.s3 is None:
        raise RuntimeError("s3-direct needs SeaweedFS")
    server = Server(target, site.s3.port, None)
    return server


def _ready(server: Server, log: Path) -> Server:
    assert server.process is not None
    try:
        wait_http(server.url(server.target.prefix + TINY), server.process, log, START_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


STARTERS: Mapping[str, Callable[[Target, Site], Server]] = {
    PROXY_LOCAL.name: start_proxy,
    PROXY_S3_AIO.name: start_proxy,
    PROXY_S3_BOTO3.name: start_proxy,
    NGINX.name: start_nginx,
    STARLETTE.name: _start_script("starlette_file.py"),
    AIOHTTP.name: _start_script("aiohttp_file.py"),
    S3_DIRECT.name: start_s3_direct,
}


def start(target: Target, site: Site) -> Server:
    return STARTERS[target.base](target, site)
