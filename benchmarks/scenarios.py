"""The scenarios. Each measures one server once and returns {metric: value}.

big         curl downloads the whole object to /dev/null, BIG_DOWNLOADS times: median MB/s
ranges      wrk, 1 thread, 32 connections: random 64 KiB ranges: req/s, p50, p99, answers that
            are not 206s of 64 KiB (status and socket errors, bytes that do not add up)
memory50/100  slow readers (64 KiB every 10 ms): peak RSS of the server's process tree, served
fairness    64 slow readers, GET /healthz meanwhile: p99 latency (proxy only)
disconnect  50 clients hang up mid-download: seconds until the server's CPU time stops growing;
            S3 bytes still relayed to the proxy after the hang-up (S3 proxies, via relay.py)
ttfb        curl, 64 KiB ranges: median time to first byte
ranges-cold ranges on a cache target restarted with an empty cache before each run
coalesce    32 clients start the same uncached 64 MiB download at once (cache targets, via
            relay.py): S3 bytes / object size, clients that got the whole object
redirect    wrk GETs on a redirecting S3 mount (307s, not followed): proxy CPU ms per answer
listing     S3 proxies: a JSON Lines listing of LISTING_PREFIX (--listing-keys keys) against
            boto3's paginator listing it straight from SeaweedFS in the same run: keys/s, the
            ratio, the first line's latency, the proxy's RSS growth

Before a cache target's run, `Scenario.cache` says what its cache holds: "warm" (the whole big
object was read through it once since it started: see warm), "cold" (restarted, empty), or ""
(what the previous runs left).
"""

from __future__ import annotations

import http.client
import json
import random
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from procs import CLOCK_TICK_S, LOOPBACK, Sampler, cpu_ticks, rss_bytes, tree_pids
from relay import FLUSH_INTERVAL_S, bytes_between
from servers import BIG, COALESCE, COALESCE_SIZE, Server, Target, has_cache

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
WARM_PROBES = 8
COALESCE_CLIENTS = 32
COALESCE_TIMEOUT_S = 120.0
LISTING_PREFIX = "list/"  # where run.py uploads the listing scenario's empty objects
LISTING_TIMEOUT_S = 600.0
BIG_DOWNLOADS = 3  # per run of big; the run's figure is their median

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
    coalesce_sha256: str = ""  # of the COALESCE object
    listing_keys: int = 0  # objects below LISTING_PREFIX (0: not uploaded)
    s3_endpoint_url: str = ""  # SeaweedFS, for the paginator
    s3_bucket: str = ""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    metrics: tuple[str, ...]
    applies: Callable[[Target], bool]
    measure: Callable[[Config, Server, int], Measurement]  # (config, server, run index)
    relayed: bool = False  # S3 proxies: measure the instance behind relay.py
    cache: Literal["", "warm", "cold"] = ""  # a cache target's cache before each run

    def covers(self, target: Target) -> bool:
        """Whether this scenario measures target (one it applies to, and one that is not
        limited to other scenarios: Target.scenarios)."""
        return self.applies(target) and (not target.scenarios or self.name in target.scenarios)


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
    """The median rate of BIG_DOWNLOADS downloads in a row, each by a new curl. One download of
    the 1 GiB object by nginx or the proxy lasts ~0.6 s here, and single ones spread 1.8x."""
    rates = []
    for _ in range(BIG_DOWNLOADS):
        out = _run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
            + [_object_url(server)],
            timeout_s=config.size / (20 * MB) + 30,
        )
        code, size, total = out.split()
        if code != "200" or int(size) != config.size:
            raise NoData(f"big: HTTP {code}, {size} bytes")
        rates.append(config.size / float(total) / MB)
    return {"big_mbps": statistics.median(rates)}


# -- ranges ----------------------------------------------------------------------------------


CONNECTIONS = 32  # wrk's, in the ranges scenarios
HEAD_SLACK = 16  # bytes a 206's head may differ by from the probe's: Content-Range's digits


def _range_head_bytes(server: Server) -> int:
    """The size of the head of a 206 answer to a 64 KiB range (NoData unless it is one)."""
    out = _run(
        ["curl", "-sS", "-o", "/dev/null", "-r", f"0-{SPAN - 1}"]
        + ["-w", "%{http_code} %{size_header} %{size_download}", _object_url(server)],
        timeout_s=PROBE_TIMEOUT_S + 30,
    )
    code, head, body = out.split()
    if code != "206" or int(body) != SPAN:
        raise NoData(f"ranges: HTTP {code} with {body} bytes for a {SPAN}-byte range")
    return int(head)


def odd_answers(requests: int, received: int, head: int, in_flight: int) -> int:
    """At least how many of `requests` answers were not a 206 of SPAN bytes with a head of about
    `head` bytes, given the `received` bytes wrk read (answers still arriving when it stopped,
    at most `in_flight`, add theirs). A 200 of the whole object among thousands of 206s shows."""
    answer = SPAN + head
    least = requests * (answer - HEAD_SLACK)
    most = (requests + in_flight) * (answer + HEAD_SLACK)
    missing = max(0, least - received, received - most)
    return -(-missing // answer)


def measure_ranges(config: Config, server: Server, run_index: int) -> Measurement:
    """wrk with ranges.lua. The answers are checked from wrk's totals: no status errors, and the
    bytes read add up to the 206s of 64 KiB whose head the probe measured."""
    head = _range_head_bytes(server)
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{config.seconds:g}s", "--timeout", "5s"]
    command += ["--latency", "-s", str(HERE / "ranges.lua"), _object_url(server), "--"]
    command += [str(config.size), str(SPAN), str(run_index + 1)]
    out = _run(command, timeout_s=config.seconds + 30)
    lines = [line for line in out.splitlines() if line.startswith("BENCH ")]
    if not lines:
        raise NoData(f"ranges: no BENCH line from wrk: {out[-300:]}")
    stats = json.loads(lines[-1].removeprefix("BENCH "))
    if not stats["requests"]:
        raise NoData("ranges: no request completed")
    in_flight = CONNECTIONS + stats["socket_errors"]
    odd = odd_answers(stats["requests"], stats["bytes"], head, in_flight)
    return {
        "ranges_rps": stats["requests"] / (stats["duration_us"] / 1e6),
        "ranges_p50_ms": stats["p50_us"] / 1e3,
        "ranges_p99_ms": stats["p99_us"] / 1e3,
        "ranges_non206": stats["status_errors"] + stats["socket_errors"] + odd,
    }


# -- redirect --------------------------------------------------------------------------------


_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")
_WRK_BAD = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def measure_redirect(config: Config, server: Server, _run_index: int) -> Measurement:
    """wrk, 1 thread, 32 connections, GETs of the big object on a redirecting mount (wrk does
    not follow the 307): the proxy's CPU time per answer, from its process tree's ticks."""
    connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=10)
    try:
        connection.request("GET", server.target.prefix + BIG)
        probe = connection.getresponse()
        probe.read()
    finally:
        connection.close()
    if probe.status != 307 or not probe.getheader("location"):
        raise NoData(f"redirect: HTTP {probe.status}, Location {probe.getheader('location')!r}")
    pids = _server_pids(server)
    before = cpu_ticks(pids)
    command = ["wrk", "-t1", "-c32", f"-d{config.seconds:g}s", "--timeout", "5s"]
    out = _run([*command, _object_url(server)], timeout_s=config.seconds + 30)
    used_s = (cpu_ticks(pids) - before) * CLOCK_TICK_S
    total = _WRK_TOTAL.search(out)
    if total is None or not int(total[1]):
        raise NoData(f"redirect: no request count from wrk: {out[-300:]}")
    requests = int(total[1])
    seconds = float(total[2]) / (1000 if total[3] == "ms" else 1)
    bad = _WRK_BAD.search(out)
    return {
        "redirect_cpu_ms": used_s / requests * 1e3,
        "redirect_rps": requests / seconds,
        "redirect_non3xx": int(bad[1]) if bad else 0,
    }


def measure_ranges_cold(config: Config, server: Server, run_index: int) -> Measurement:
    """ranges, on a server that has just started with an empty cache (Scenario.cache)."""
    measured = measure_ranges(config, server, run_index)
    return {name.replace("ranges_", "ranges_cold_", 1): value for name, value in measured.items()}


def _cache_status(server: Server, first: int) -> str:
    """The Cache-Status of a GET for 64 KiB from first (NoData unless 206)."""
    connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=PROBE_TIMEOUT_S)
    try:
        path = server.target.prefix + BIG
        connection.request("GET", path, headers={"Range": f"bytes={first}-{first + SPAN - 1}"})
        response = connection.getresponse()
        response.read()
    except OSError as error:
        raise NoData(f"warm probe: {error}") from error
    finally:
        connection.close()
    if response.status != 206:
        raise NoData(f"warm probe: HTTP {response.status}")
    return response.getheader("Cache-Status") or "no Cache-Status"


def warm(config: Config, server: Server) -> str:
    """Read the whole big object through server once (curl to /dev/null, not timed), then
    WARM_PROBES random 64 KiB ranges: what that took, and the ranges' Cache-Status answers."""
    started = time.monotonic()
    out = _run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
        + [_object_url(server)],
        timeout_s=config.size / (5 * MB) + 60,
    )
    code, size = out.split()
    if code != "200" or int(size) != config.size:
        raise NoData(f"warm: HTTP {code}, {size} bytes")
    seconds = time.monotonic() - started
    rng = random.Random(0)
    answers = Counter(
        _cache_status(server, rng.randrange(0, config.size - SPAN)) for _ in range(WARM_PROBES)
    )
    shown = ", ".join(f"{count} x {answer!r}" for answer, count in answers.most_common())
    return f"{config.size:,} bytes in {seconds:.1f} s; then {WARM_PROBES} ranges: {shown}"


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


# -- coalesce --------------------------------------------------------------------------------


def measure_coalesce(config: Config, server: Server, _run_index: int) -> Measurement:
    """COALESCE_CLIENTS clients start the same whole download of the COALESCE object together
    on a server with an empty cache (Scenario.cache), behind the relay: the bytes S3 sent until
    the server was idle again, per byte of the object, and how many clients got all of it."""
    if config.relay_log is None or server.target.backend != "s3":
        raise NoData("coalesce: not an S3 proxy behind the relay")
    started = time.monotonic()
    result = _loadgen(
        "fetch", server.port, server.target.prefix + COALESCE, "--clients", COALESCE_CLIENTS,
        "--size", COALESCE_SIZE, "--sha256", config.coalesce_sha256,
        "--timeout", COALESCE_TIMEOUT_S, timeout_s=COALESCE_TIMEOUT_S + 30,
    )  # fmt: skip
    settle(server)  # slices the cache still fetches after the last client finished count too
    time.sleep(5 * FLUSH_INTERVAL_S)  # the relay logs its count every FLUSH_INTERVAL_S
    from_s3 = bytes_between(config.relay_log, started, time.monotonic())
    if not from_s3:
        raise NoData("coalesce: no byte from S3 through the relay")
    return {
        "coalesce_s3_ratio": from_s3 / COALESCE_SIZE,
        "coalesce_complete": result["complete"],
        "coalesce_s": result["seconds"],
    }


# -- listing ---------------------------------------------------------------------------------


def _listing_client(*args: object) -> dict[str, float]:
    command = [sys.executable, str(HERE / "listing.py"), *map(str, args)]
    result: dict[str, float] = json.loads(_run(command, LISTING_TIMEOUT_S))
    return result


def measure_listing(config: Config, server: Server, run_index: int) -> Measurement:
    """The proxy's listing of LISTING_PREFIX (?recursive: every key, no folders) and boto3's
    paginator listing the same prefix from SeaweedFS, one after the other (the order alternates
    with the run): keys/s of both and their ratio, the time to the first line, and the peak of
    the proxy's RSS while it listed over its RSS before."""
    if not config.listing_keys or not config.s3_endpoint_url:
        raise NoData("listing: no objects uploaded for it")
    pids = _server_pids(server)

    def direct() -> dict[str, float]:
        return _listing_client(
            "paginator", config.s3_endpoint_url, config.s3_bucket, LISTING_PREFIX
        )

    def through() -> tuple[dict[str, float], float]:
        before = rss_bytes(pids)
        with Sampler(lambda: rss_bytes(pids)) as sampler:
            result = _listing_client(
                "proxy", server.port, f"{server.target.prefix}{LISTING_PREFIX}?recursive"
            )
        return result, max(0.0, sampler.peak() - before)

    if run_index % 2:
        (proxied, growth), paginated = through(), direct()
    else:
        paginated = direct()
        proxied, growth = through()
    for name, result in (("proxy", proxied), ("paginator", paginated)):
        if result["keys"] != config.listing_keys:
            raise NoData(f"listing: {name} listed {result['keys']:.0f} keys")
    proxy_kps = proxied["keys"] / proxied["seconds"]
    paginator_kps = paginated["keys"] / paginated["seconds"]
    return {
        "listing_kps": proxy_kps,
        "listing_paginator_kps": paginator_kps,
        "listing_vs_paginator": proxy_kps / paginator_kps,
        "listing_first_line_ms": proxied["first_line_s"] * 1e3,
        "listing_rss_growth_mb": growth / MB,
        "listing_complete": proxied["complete"],
    }


def _uncached_s3_proxies(target: Target) -> bool:
    return target.role == "proxy" and target.backend == "s3" and not has_cache(target)


# -- the list --------------------------------------------------------------------------------


def _everyone(_target: Target) -> bool:
    return True


def _processes(target: Target) -> bool:
    # SeaweedFS is a whole storage server in one process, with background work of its own.
    return target.name != "s3-direct"


def _proxies(target: Target) -> bool:
    return target.role == "proxy"


def _redirecting(target: Target) -> bool:
    return "redirect" in target.scenarios


SCENARIOS = [
    Scenario("big", ("big_mbps",), _everyone, measure_big, cache="warm"),
    Scenario(
        "ranges",
        ("ranges_rps", "ranges_p50_ms", "ranges_p99_ms", "ranges_non206"),
        _everyone,
        measure_ranges,
        cache="warm",
    ),
    Scenario(
        "memory50",
        ("mem50_before_mb", "mem50_peak_mb", "mem50_served"),
        _processes,
        memory(50),
        cache="warm",
    ),
    Scenario(
        "memory100",
        ("mem100_before_mb", "mem100_peak_mb", "mem100_served"),
        _processes,
        memory(100),
        cache="warm",
    ),
    Scenario(
        "fairness",
        ("healthz_p99_ms", "fairness_served"),
        _proxies,
        measure_fairness,
        cache="warm",
    ),
    Scenario(
        "disconnect",
        ("idle_s", "hangup_reached", "s3_mb_after_hangup"),
        _processes,
        measure_disconnect,
        relayed=True,
        cache="cold",
    ),
    Scenario("ttfb", ("ttfb_ms",), _everyone, measure_ttfb, cache="warm"),
    Scenario(
        "ranges-cold",
        ("ranges_cold_rps", "ranges_cold_p50_ms", "ranges_cold_p99_ms", "ranges_cold_non206"),
        has_cache,
        measure_ranges_cold,
        cache="cold",
    ),
    Scenario(
        "coalesce",
        ("coalesce_s3_ratio", "coalesce_complete", "coalesce_s"),
        has_cache,
        measure_coalesce,
        relayed=True,
        cache="cold",
    ),
    Scenario(
        "redirect",
        ("redirect_cpu_ms", "redirect_rps", "redirect_non3xx"),
        _redirecting,
        measure_redirect,
    ),
    Scenario(
        "listing",
        (
            "listing_kps",
            "listing_paginator_kps",
            "listing_vs_paginator",
            "listing_first_line_ms",
            "listing_rss_growth_mb",
            "listing_complete",
        ),
        _uncached_s3_proxies,
        measure_listing,
    ),
]
ALIASES = {"memory": ("memory50", "memory100")}
