"""Medians, ratios against the peers of the same run, goals with PASS/MISS, Markdown and JSON;
and RESULTS.md, the report of the latest full run with the machine and commit it ran on."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

# metric -> target -> one value per run (None: that run produced no data)
Results = dict[str, dict[str, list[float | None]]]

METRICS = {  # metric: (label, decimals)
    "big_mbps": ("big: MB/s", 0),
    "ranges_rps": ("ranges: req/s", 0),
    "ranges_p50_ms": ("ranges: p50 ms", 2),
    "ranges_p99_ms": ("ranges: p99 ms", 2),
    "ranges_non206": ("ranges: non-206 answers", 0),
    "mem50_before_mb": ("memory, 50 slow: RSS before MB", 1),
    "mem50_peak_mb": ("memory, 50 slow: peak RSS MB", 1),
    "mem50_served": ("memory, 50 slow: clients served", 0),
    "mem100_before_mb": ("memory, 100 slow: RSS before MB", 1),
    "mem100_peak_mb": ("memory, 100 slow: peak RSS MB", 1),
    "mem100_served": ("memory, 100 slow: clients served", 0),
    "mem_growth_mb": ("memory: peak at 100 slow - peak at 50, MB", 1),
    "healthz_p99_ms": ("fairness: /healthz p99 ms (64 slow)", 2),
    "fairness_served": ("fairness: slow readers served", 0),
    "idle_s": ("disconnect: s until idle", 2),
    "hangup_reached": ("disconnect: clients mid-download", 0),
    "s3_mb_after_hangup": ("disconnect: S3 MB after hang-up", 2),
    "ttfb_ms": ("ttfb: 64 KiB range, ms", 2),
    "ranges_cold_rps": ("ranges, cold cache: req/s", 0),
    "ranges_cold_p50_ms": ("ranges, cold cache: p50 ms", 2),
    "ranges_cold_p99_ms": ("ranges, cold cache: p99 ms", 2),
    "ranges_cold_non206": ("ranges, cold cache: non-206 answers", 0),
    "coalesce_s3_ratio": ("coalesce, 32 x 64 MiB: S3 bytes / object size", 2),
    "coalesce_complete": ("coalesce: clients with the whole object", 0),
    "coalesce_s": ("coalesce: s until the last client finished", 2),
    "redirect_cpu_ms": ("redirect: proxy CPU ms per 307", 3),
    "redirect_rps": ("redirect: 307s/s", 0),
    "redirect_non3xx": ("redirect: answers other than 2xx/3xx", 0),
    "listing_kps": ("listing: keys/s through the proxy", 0),
    "listing_paginator_kps": ("listing: keys/s, boto3 paginator straight from S3", 0),
    "listing_vs_paginator": ("listing: proxy / paginator keys/s (same run)", 2),
    "listing_first_line_ms": ("listing: first line, ms", 1),
    "listing_rss_growth_mb": ("listing: RSS growth while listing, MB", 1),
    "listing_complete": ("listing: complete (every key, then the last line)", 0),
    # Issue 25 (benchmarks/uploads.py); on s3-direct, boto3's upload_file straight to SeaweedFS.
    "upload_mbps": ("upload: MB/s, one PUT of the big object", 0),
    "upload_peak_mb": ("upload: peak RSS MB during it", 1),
    "upload20_before_mb": ("upload, 20 at once: RSS before MB", 1),
    "upload20_peak_mb": ("upload, 20 at once: peak RSS MB", 1),
    "upload20_stored": ("upload, 20 at once: stored", 0),
    "upload20_mbps": ("upload, 20 at once: MB/s in all", 0),
}


@dataclass(frozen=True, slots=True)
class Goal:
    """target's metric compared with bound, or with factor x peer's metric + offset (the
    peer's peer_metric when it is another metric)."""

    target: str
    metric: str
    higher_is_better: bool
    bound: float
    peer: str | None = None
    offset: float = 0.0
    peer_metric: str | None = None

    @property
    def label(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        name = METRICS[self.metric][0]
        if self.peer is None:
            return f"{self.target} {name} {sign} {self.bound:g}"
        extra = f" + {self.offset:g}" if self.offset else ""
        factor = "" if self.bound == 1 else f"{self.bound:g} x "
        peer = (
            self.peer if self.peer_metric is None else f"{self.peer} {METRICS[self.peer_metric][0]}"
        )
        return f"{self.target} {name} {sign} {factor}{peer}{extra}"


@dataclass(frozen=True, slots=True)
class Verdict:
    goal: str
    measured: str
    result: str  # PASS, MISS or "no data"


PROXIES = ("proxy-local", "proxy-s3-aio", "proxy-s3-boto3")
S3_PROXIES = ("proxy-s3-aio", "proxy-s3-boto3")
CACHE_PROXIES = ("proxy-s3-aio-cache", "proxy-s3-boto3-cache")  # S3 proxies, slice cache on
UPLOAD_PROXIES = ("proxy-s3-aio-upload", "proxy-s3-boto3-upload")  # S3 proxies, writes on
# One chunk per stream at the default largest chunk (PROXY_CHUNK_SIZE, 1 MiB), 50 streams.
HANGUP_BOUND_MB = 50 * 1024 * 1024 / 1e6

# The targets, each as measured here (ratios within one run).
GOALS = [
    Goal("proxy-local", "big_mbps", True, 0.85, "nginx"),
    Goal("proxy-local", "big_mbps", True, 0.9, "aiohttp"),
    Goal("proxy-local", "ranges_rps", True, 0.3, "nginx"),
    Goal("proxy-local", "ranges_rps", True, 4.0, "starlette"),
    Goal("proxy-local", "ranges_rps", True, 2.0, "aiohttp"),
    Goal("proxy-local", "ranges_p99_ms", False, 10),
    Goal("proxy-s3-aio", "big_mbps", True, 0.9, "s3-direct"),
    Goal("proxy-s3-boto3", "big_mbps", True, 0.7, "s3-direct"),
    Goal("proxy-s3-aio", "ranges_rps", True, 0.6, "s3-direct"),
    Goal("proxy-s3-boto3", "ranges_rps", True, 0.4, "s3-direct"),
    *(Goal(name, "ttfb_ms", False, 1, "s3-direct", offset=3) for name in S3_PROXIES),
    *(Goal(name, "ranges_non206", False, 0) for name in PROXIES),
    *(Goal(name, "mem50_peak_mb", False, 100) for name in PROXIES),
    *(Goal(name, "mem50_served", True, 50) for name in PROXIES),
    *(Goal(name, "mem100_served", True, 100) for name in PROXIES),
    *(Goal(name, "mem_growth_mb", False, 25) for name in PROXIES),
    *(Goal(name, "healthz_p99_ms", False, 10) for name in PROXIES),
    *(Goal(name, "idle_s", False, 1) for name in PROXIES),
    *(Goal(name, "s3_mb_after_hangup", False, HANGUP_BOUND_MB) for name in S3_PROXIES),
    # The slice cache (issue 23): warm ranges and big download, coalescing, memory, cold ranges.
    Goal("proxy-s3-aio-cache", "ranges_rps", True, 2.0, "s3-direct"),
    Goal("proxy-s3-boto3-cache", "ranges_rps", True, 1.0, "s3-direct"),
    *(Goal(name, "ranges_p99_ms", False, 20) for name in CACHE_PROXIES),
    *(Goal(name, "ranges_non206", False, 0) for name in CACHE_PROXIES),
    *(Goal(name, "big_mbps", True, 1.5, "s3-direct") for name in CACHE_PROXIES),
    *(Goal(name, "coalesce_s3_ratio", False, 1.05) for name in CACHE_PROXIES),
    *(Goal(name, "coalesce_complete", True, 32) for name in CACHE_PROXIES),
    *(Goal(name, "mem50_peak_mb", False, 100) for name in CACHE_PROXIES),
    *(Goal(name, "mem50_served", True, 50) for name in CACHE_PROXIES),
    *(
        Goal(cached, "ranges_cold_rps", True, 0.9, plain, peer_metric="ranges_rps")
        for cached, plain in zip(CACHE_PROXIES, S3_PROXIES, strict=True)
    ),
    *(Goal(name, "ranges_cold_non206", False, 0) for name in CACHE_PROXIES),
    # Listings (issue 28): against boto3's paginator in the same run; first line; memory.
    # Issue 24: three mounts cost ranges at most 5%; a redirect answer at most 0.5 ms of CPU.
    Goal("proxy-local-mounts", "ranges_rps", True, 0.95, "proxy-local"),
    Goal("proxy-s3-aio-redirect", "redirect_cpu_ms", False, 0.5),
    Goal("proxy-s3-aio-redirect", "redirect_non3xx", False, 0),
    *(Goal(name, "listing_vs_paginator", True, 0.8) for name in S3_PROXIES),
    *(Goal(name, "listing_first_line_ms", False, 100) for name in S3_PROXIES),
    *(Goal(name, "listing_rss_growth_mb", False, 20) for name in S3_PROXIES),
    *(Goal(name, "listing_complete", True, 1) for name in S3_PROXIES),
    # Uploads (issue 25): against boto3's upload_file straight to SeaweedFS; RSS under 20.
    Goal("proxy-s3-aio-upload", "upload_mbps", True, 0.8, "s3-direct"),
    Goal("proxy-s3-boto3-upload", "upload_mbps", True, 0.6, "s3-direct"),
    *(Goal(name, "upload20_peak_mb", False, 100) for name in UPLOAD_PROXIES),
    *(Goal(name, "upload20_stored", True, 20) for name in UPLOAD_PROXIES),
]
RATIO_PAIRS = [
    ("proxy-local", "nginx"),
    ("proxy-local", "starlette"),
    ("proxy-local", "aiohttp"),
    ("proxy-s3-aio", "s3-direct"),
    ("proxy-s3-boto3", "s3-direct"),
    ("proxy-s3-aio-cache", "s3-direct"),
    ("proxy-s3-boto3-cache", "s3-direct"),
]
RATIO_METRICS = ("big_mbps", "ranges_rps", "ttfb_ms")


def medians(results: Results) -> dict[str, dict[str, float | None]]:
    """The median of each metric's runs that produced data (None when none did)."""
    table: dict[str, dict[str, float | None]] = {}
    for metric, per_target in results.items():
        for target, values in per_target.items():
            present = [value for value in values if value is not None]
            table.setdefault(metric, {})[target] = statistics.median(present) if present else None
    # Derived: what 50 more slow readers cost, from the two peaks' medians.
    peaks50, peaks100 = table.get("mem50_peak_mb", {}), table.get("mem100_peak_mb", {})
    for target, peak100 in peaks100.items():
        peak50 = peaks50.get(target)
        if peak100 is not None and peak50 is not None:
            table.setdefault("mem_growth_mb", {})[target] = peak100 - peak50
    return table


def _format(metric: str, value: float | None) -> str:
    if value is None:
        return "no data"
    return f"{value:,.{METRICS[metric][1]}f}"


def judge(goal: Goal, table: dict[str, dict[str, float | None]]) -> Verdict:
    peer_metric = goal.peer_metric or goal.metric
    mine = table.get(goal.metric, {}).get(goal.target)
    theirs = None if goal.peer is None else table.get(peer_metric, {}).get(goal.peer)
    if mine is None or (goal.peer is not None and theirs is None):
        return Verdict(goal.label, "no data", "no data")
    if theirs is None:
        limit, measured = goal.bound, _format(goal.metric, mine)
    elif goal.offset:
        limit = theirs * goal.bound + goal.offset
        measured = f"{mine:.2f} vs {theirs:.2f} ({mine - theirs:+.2f})"
    else:
        limit = theirs * goal.bound
        measured = f"{mine / theirs:.2f}x ({_format(goal.metric, mine)} / "
        measured += f"{_format(peer_metric, theirs)})"
    passed = mine >= limit if goal.higher_is_better else mine <= limit
    return Verdict(goal.label, measured, "PASS" if passed else "MISS")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(row) for row in rows)]


def metrics_table(table: dict[str, dict[str, float | None]], targets: Sequence[str]) -> list[str]:
    rows = []
    for metric, (label, _) in METRICS.items():
        if metric not in table:
            continue
        values = table[metric]
        cells = [_format(metric, values[t]) if t in values else "n/a" for t in targets]
        rows.append([label, *cells])
    return _table(["metric (median)", *targets], rows)


def ratios_table(
    table: dict[str, dict[str, float | None]], compared: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """RATIO_PAIRS, then the compared pairs (a target and its variant)."""
    rows = []
    for mine, peer in [*RATIO_PAIRS, *compared]:
        cells = []
        for metric in RATIO_METRICS:
            values = table.get(metric, {})
            a, b = values.get(mine), values.get(peer)
            cells.append("n/a" if a is None or b is None or not b else f"{a / b:.2f}x")
        if any(cell != "n/a" for cell in cells):
            rows.append([f"{mine} / {peer}", *cells])
    return _table(["ratio (same run)", *(METRICS[m][0] for m in RATIO_METRICS)], rows)


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo or else from lscpu ("unknown" without both)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in lscpu.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine() -> dict[str, str]:
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def markdown(
    results: Results,
    targets: Sequence[str],
    settings: dict[str, object],
    notes: Sequence[str],
    compared: Sequence[tuple[str, str]] = (),
) -> tuple[str, list[Verdict]]:
    table = medians(results)
    chosen = set(targets)
    verdicts = [
        judge(goal, table)
        for goal in GOALS
        if goal.metric in table and {goal.target, goal.peer or goal.target} <= chosen
    ]
    info = machine()
    lines = [
        f"Benchmark {info['date']}: {info['nproc']} x {info['cpu']}, {info['ram']} RAM, "
        f"Linux {info['kernel']}; run.py on Python {info['python']} (the servers': Settings).",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".",
        "",
        *metrics_table(table, targets),
        "",
        *ratios_table(table, compared),
        "",
        *_table(["goal", "measured", "result"], [[v.goal, v.measured, v.result] for v in verdicts]),
    ]
    return "\n".join(lines) + "\n", verdicts


def write(
    directory: Path,
    text: str,
    results: Results,
    verdicts: Sequence[Verdict],
    settings: dict[str, object],
    notes: Sequence[str],
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.md").write_text(text, encoding="utf-8")
    document = {
        "machine": machine(),
        "settings": settings,
        "runs": results,
        "medians": medians(results),
        "goals": [asdict(verdict) for verdict in verdicts],
        "notes": list(notes),
    }
    (directory / "latest.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a full run's figures come from: RESULTS.md's header."""

    started: datetime  # UTC
    finished: datetime  # UTC
    cpu: str
    cores: int | None
    commit: str  # short hash, "-dirty" when the tree had uncommitted changes
    command: str


def git_commit(root: Path) -> str:
    """``git rev-parse --short HEAD`` of root, plus "-dirty" when tracked files differ from it or
    files git does not ignore are untracked; "unknown" without git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if status.strip() else "")


def results_document(report: str, provenance: Provenance) -> str:
    """RESULTS.md: what ran, where and on which code, then the report ``markdown`` made."""
    started = provenance.started.strftime("%Y-%m-%d %H:%M")
    finished = provenance.finished.strftime(
        "%H:%M" if provenance.finished.date() == provenance.started.date() else "%Y-%m-%d %H:%M"
    )
    cores = "?" if provenance.cores is None else str(provenance.cores)
    lines = [
        "# Benchmark results",
        "",
        "The latest full run of `python benchmarks/run.py`, written by that command; each full run",
        "overwrites this file (earlier results are in its git history). What the scenarios and",
        "goals mean: benchmarks/README.md. Why the proxy is built the way it is: docs/design.md.",
        "",
        f"- Date: {started}–{finished} UTC",
        f"- CPU: {provenance.cpu}, {cores} cores",
        f"- Commit: {provenance.commit}",
        f"- Command: `{provenance.command}`",
        "",
        report.rstrip("\n"),
    ]
    return "\n".join(lines) + "\n"
