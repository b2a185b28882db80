"""The scenarios. Each measures one server once and returns {metric: value}.

big         one curl downloads the whole object to /dev/null: MB/s
ranges      wrk, 1 thread, 32 connections: random 64 KiB ranges: req/s, p50, p99, non-206
memory50/100  slow readers (64 KiB every 10 ms): peak RSS of the server's process tree, served
fairness    64 slow readers, GET /healthz meanwhile: p99 latency (proxy only)
disconnect  50 clients hang up mid-download: seconds until the server's CPU time stops growing;
            S3 bytes still relayed to the proxy after the hang-up (S3 proxies, via relay.py)
ttfb        curl, 64 KiB ranges: median time to first byte
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from procs import LOOPBACK, Sampler, cpu_ticks, rss_bytes, tree_pids
from relay import bytes_between
from servers import BIG, Server, Target

HERE = Path(__file__).resolve().parent
SPAN = 64 * 1024
MB = 1e6
QUIET_S = 0.2  # idle: CPU time did not grow for this long
HANGUP_CLIENTS = 50
FAIRNESS_READERS = 64
PROBE_INTERVAL_S = 0.02
MAX_PROBES = 500
PROBE_TIMEOUT_S = 5.0
SETTLE_TIMEOUT_S = 30.0

Measurement = dict[str, float]


class NoData(Exception):
    """A scenario run produced no usable figure (the reason is the message)."""


@dataclass(frozen=True, slots=True)
class Config:
    size: int  # bytes of the big object
    seconds: float  # duration of ranges, memory and fairness runs
    ttfb_samples: int
    idle_timeout_s: float
    relay_log: Path | None


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    metrics: tuple[str, ...]
    applies: Callable[[Target], bool]
    measure: Callable[[Config, Server, int], Measurement]  # (config, server, run index)


def _object_url(server: Server) -> str:
    return server.url(server.target.prefix + BIG)


def _run(command: Sequence[str], timeout_s: float) -> str:
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise NoData(f"{command[0]} timed out after {timeout_s:.0f} s") from error
    if done.returncode != 0:
        raise NoData(f"{command[0]} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


def _loadgen(*args: object, timeout_s: float) -> dict[str, float]:
    command = [sys.executable, str(HERE / "loadgen.py"), *map(str, args)]
    result: dict[str, float] = json.loads(_run(command, timeout_s))
    return result


# -- big -------------------------------------------------------------------------------------


def measure_big(config: Config, server: Server, _run_index: int) -> Measurement:
    out = _run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
        + [_object_url(server)],
        timeout_s=config.size / (20 * MB) + 30,
    )
    code, size, total = out.split()
    if code != "200" or int(size) != config.size:
        raise NoData(f"big: HTTP {code}, {size} bytes")
    return {"big_mbps": config.size / float(total) / MB}


# -- ranges ----------------------------------------------------------------------------------


def measure_ranges(config: Config, server: Server, run_index: int) -> Measurement:
    command = ["wrk", "-t1", "-c32", f"-d{config.seconds:g}s", "--timeout", "5s", "--latency"]
    command += ["-s", str(HERE / "ranges.lua"), _object_url(server), "--"]
    command += [str(config.size), str(SPAN), str(run_index + 1)]
    out = _run(command, timeout_s=config.seconds + 30)
    lines = [line for line in out.splitlines() if line.startswith("BENCH ")]
    if not lines:
        raise NoData(f"ranges: no BENCH line from wrk: {out[-300:]}")
    stats = json.loads(lines[-1].removeprefix("BENCH "))
    if not stats["requests"]:
        raise NoData("ranges: no request completed")
    return {
        "ranges_rps": stats["requests"] / (stats["duration_us"] / 1e6),
        "ranges_p50_ms": stats["p50_us"] / 1e3,
        "ranges_p99_ms": stats["p99_us"] / 1e3,
        "ranges_non206": stats["non206"] + stats["socket_errors"],
    }


# -- memory ----------------------------------------------------------------------------------


def _server_pids(server: Server) -> list[int]:
    if server.pid is None:
        raise NoData("not a process started by the benchmark")
    return tree_pids(server.pid)


def memory(clients: int) -> Callable[[Config, Server, int], Measurement]:
    """RSS of the server's process tree before and at its peak, and clients that got data."""

    def measure(config: Config, server: Server, _run_index: int) -> Measurement:
        pids = _server_pids(server)
        before = rss_bytes(pids)
        with Sampler(lambda: rss_bytes(pids)) as sampler:
            result = _loadgen(
                "slow", server.port, server.target.prefix + BIG, "--clients", clients,
                "--seconds", config.seconds, timeout_s=config.seconds + 30,
            )  # fmt: skip
        return {
            f"mem{clients}_before_mb": before / MB,
            f"mem{clients}_peak_mb": sampler.peak() / MB,
            f"mem{clients}_served": result["served"],
        }

    return measure


# -- fairness --------------------------------------------------------------------------------


def _probe(port: int, path: str) -> float:
    """Seconds for one GET on a new connection (PROBE_TIMEOUT_S if none); NoData unless 200."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=PROBE_TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
    except TimeoutError:
        return PROBE_TIMEOUT_S
    except OSError as error:
        raise NoData(f"probe {path}: {error}") from error
    finally:
        connection.close()
    if response.status != 200:
        raise NoData(f"probe {path}: HTTP {response.status}")
    return time.perf_counter() - started


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure_fairness(config: Config, server: Server, _run_index: int) -> Measurement:
    health = server.target.health_path
    if health is None:
        raise NoData("fairness: no health endpoint")
    command = [sys.executable, str(HERE / "loadgen.py"), "slow", str(server.port)]
    command += [server.target.prefix + BIG, "--clients", str(FAIRNESS_READERS)]
    command += ["--seconds", str(config.seconds)]
    started = time.monotonic()
    readers = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(min(1.0, config.seconds / 4))  # let the readers connect
        latencies: list[float] = []
        while len(latencies) < MAX_PROBES and time.monotonic() < started + config.seconds - 0.3:
            latencies.append(_probe(server.port, health))
            time.sleep(PROBE_INTERVAL_S)
        out, _ = readers.communicate(timeout=config.seconds + 30)
    finally:
        if readers.poll() is None:
            readers.kill()
            readers.wait()
    if not latencies:
        raise NoData("fairness: no probe")
    served = json.loads(out)["served"]
    return {"healthz_p99_ms": _percentile(latencies, 0.99) * 1e3, "fairness_served": served}


# -- disconnect ------------------------------------------------------------------------------


def _wait_quiet(sampler: Sampler, since: float, timeout_s: float) -> float | None:
    deadline = since + timeout_s
    while (quiet := sampler.quiet_since(since, QUIET_S)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return quiet


def settle(server: Server) -> float | None:
    """Wait until the server's CPU time stops growing: the seconds it took, None if it did not
    within SETTLE_TIMEOUT_S."""
    if server.pid is None:
        return 0.0
    pids = tree_pids(server.pid)
    started = time.monotonic()
    with Sampler(lambda: cpu_ticks(pids)) as sampler:
        quiet = _wait_quiet(sampler, started, SETTLE_TIMEOUT_S)
    return None if quiet is None else quiet - started


def measure_disconnect(config: Config, server: Server, _run_index: int) -> Measurement:
    pids = _server_pids(server)
    with Sampler(lambda: cpu_ticks(pids)) as sampler:
        result = _loadgen(
            "hangup", server.port, server.target.prefix + BIG, "--clients", HANGUP_CLIENTS,
            timeout_s=60,
        )  # fmt: skip
        hangup = result["hangup_at"]
        quiet = _wait_quiet(sampler, hangup, config.idle_timeout_s)
    measured = {
        "idle_s": config.idle_timeout_s if quiet is None else max(0.0, quiet - hangup),
        "hangup_reached": result["reached"],
    }
    if config.relay_log is not None and server.target.backend == "s3":
        after = bytes_between(config.relay_log, hangup, time.monotonic())
        measured["s3_mb_after_hangup"] = after / MB
    return measured


# -- ttfb ------------------------------------------------------------------------------------


def measure_ttfb(config: Config, server: Server, run_index: int) -> Measurement:
    rng = random.Random(run_index)  # the same ranges for every server in one run
    samples = []
    for _ in range(config.ttfb_samples):
        first = rng.randrange(0, config.size - SPAN)
        out = _run(
            ["curl", "-sS", "-o", "/dev/null", "-r", f"{first}-{first + SPAN - 1}"]
            + ["-w", "%{http_code} %{time_starttransfer}", _object_url(server)],
            timeout_s=30,
        )
        code, seconds = out.split()
        if code != "206":
            raise NoData(f"ttfb: HTTP {code}")
        samples.append(float(seconds))
    return {"ttfb_ms": statistics.median(samples) * 1e3}


# -- the list --------------------------------------------------------------------------------


def _everyone(_target: Target) -> bool:
    return True


def _processes(target: Target) -> bool:
    # SeaweedFS is a whole storage server in one process, with background work of its own.
    return target.name != "s3-direct"


def _proxies(target: Target) -> bool:
    return target.role == "proxy"


SCENARIOS = [
    Scenario("big", ("big_mbps",), _everyone, measure_big),
    Scenario(
        "ranges",
        ("ranges_rps", "ranges_p50_ms", "ranges_p99_ms", "ranges_non206"),
        _everyone,
        measure_ranges,
    ),
    Scenario(
        "memory50", ("mem50_before_mb", "mem50_peak_mb", "mem50_served"), _processes, memory(50)
    ),
    Scenario(
        "memory100",
        ("mem100_before_mb", "mem100_peak_mb", "mem100_served"),
        _processes,
        memory(100),
    ),
    Scenario("fairness", ("healthz_p99_ms", "fairness_served"), _proxies, measure_fairness),
    Scenario(
        "disconnect",
        ("idle_s", "hangup_reached", "s3_mb_after_hangup"),
        _processes,
        measure_disconnect,
    ),
    Scenario("ttfb", ("ttfb_ms",), _everyone, measure_ttfb),
]
ALIASES = {"memory": ("memory50", "memory100")}
