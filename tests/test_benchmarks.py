"""The benchmark harness itself stays runnable: a quick run against the proxy and nginx.

Figures are not asserted here (speed is measured by benchmarks/, not by timed tests); only that
the command works end to end, measures both servers and gets nothing but 206s for ranges, and
that a full run's benchmarks/RESULTS.md says when, where and on which commit it ran.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest

from tests.clients.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent


def benchmark_module(name: str) -> ModuleType:
    """benchmarks/<name>.py, which imports as a script's sibling, not as a package's module."""
    spec = importlib.util.spec_from_file_location(
        f"_benchmarks_{name}", ROOT / f"benchmarks/{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_run(tmp_path: Path) -> None:
    for tool in ["nginx", "wrk", "curl"]:
        require_tool(tool)
    command = [sys.executable, "benchmarks/run.py", "--quick", "--scenarios", "big,ranges"]
    command += ["--targets", "proxy-local,nginx", "--results", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    document = json.loads((tmp_path / "latest.json").read_text())
    # the proxy as deployed: its own venv with `pip install .`, without the test tools
    assert document["settings"]["proxy_python"] == "pip install . in a new virtual environment"
    medians = document["medians"]
    for server in ["proxy-local", "nginx"]:
        assert medians["big_mbps"][server] > 0
        assert medians["ranges_rps"][server] > 0
        assert medians["ranges_non206"][server] == 0
    assert "proxy-local / nginx" in (tmp_path / "latest.md").read_text()


def test_profiles_show_where_the_proxy_spends_its_cpu(tmp_path: Path) -> None:
    require_tool("wrk")
    profiles = tmp_path / "profiles"
    command = [sys.executable, "benchmarks/run.py", "--quick", "--scenarios", "ranges"]
    command += ["--targets", "proxy-local", "--results", str(tmp_path), "--profile", str(profiles)]
    command += ["--proxy-python", sys.executable]  # quicker than a new venv
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (profiles / "ranges-proxy-local.raw").stat().st_size > 0
    summary = (profiles / "ranges-proxy-local.txt").read_text()
    samples = int(summary.split(" samples", 1)[0])
    assert samples > 20  # 2 s at 100/s, the proxy busy serving wrk
    assert "(proxy/" in summary  # the proxy's own functions, by file
    assert "| self (on the CPU) | share |" in summary


def test_profile_summary_counts_self_and_inclusive_shares() -> None:
    spec = importlib.util.spec_from_file_location("profiles", ROOT / "benchmarks/profiles.py")
    assert spec is not None and spec.loader is not None
    profiles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profiles)
    summarise = profiles.summarise
    raw = [
        "main (app.py:1);handle (app.py:10);read (io.py:5) 6",
        "main (app.py:1);handle (app.py:12);write (io.py:9) 3",
        "main (app.py:2) 1",
        "garbage without a count",
    ]
    summary = summarise(raw)
    assert summary.startswith("10 samples")
    self_part, inclusive_part = summary.split("| inclusive | share |")
    assert "| `read (io.py)` | 60.0% |" in self_part
    assert "| `write (io.py)` | 30.0% |" in self_part
    assert "| `main (app.py)` | 10.0% |" in self_part
    assert "| `main (app.py)` | 100.0% |" in inclusive_part
    assert "| `handle (app.py)` | 90.0% |" in inclusive_part  # lines of one function add up


REPORT = """Benchmark 2026-11-22 04:23 UTC: 2 x AMD EPYC, 23.5 GiB RAM.

| metric (median) | proxy-local | nginx |
| --- | --- | --- |
| big: MB/s | 2,696 | 2,200 |
"""


def test_results_file_says_when_where_and_on_which_code_then_gives_the_report() -> None:
    report = benchmark_module("report")
    provenance = report.Provenance(
        started=datetime(2026, 11, 22, 4, 2, 31, tzinfo=UTC),
        finished=datetime(2026, 11, 22, 4, 23, 5, tzinfo=UTC),
        cpu="AMD EPYC 7B13",
        cores=2,
        commit="624a562-dirty",
        command=".venv/bin/python benchmarks/run.py --runs 5",
    )
    document = report.results_document(REPORT, provenance)
    head, body = document.split("\n\n- Date:", 1)
    assert head.startswith("# Benchmark results\n\n")
    assert "overwrites this file" in head
    assert body.startswith(
        " 2026-11-22 04:02–04:23 UTC\n"
        "- CPU: AMD EPYC 7B13, 2 cores\n"
        "- Commit: 624a562-dirty\n"
        "- Command: `.venv/bin/python benchmarks/run.py --runs 5`\n"
        "\n"
    )
    assert document.endswith("\n\n" + REPORT)


def test_results_file_gives_both_dates_of_a_run_past_midnight() -> None:
    report = benchmark_module("report")
    provenance = report.Provenance(
        started=datetime(2026, 11, 21, 23, 50, tzinfo=UTC),
        finished=datetime(2026, 11, 22, 0, 11, tzinfo=UTC),
        cpu="unknown",
        cores=None,
        commit="unknown",
        command="python benchmarks/run.py",
    )
    document = report.results_document(REPORT, provenance)
    assert "- Date: 2026-11-21 23:50–2026-11-22 00:11 UTC\n" in document
    assert "- CPU: unknown, ? cores\n" in document


def test_results_file_names_the_commit_and_whether_the_tree_differed(tmp_path: Path) -> None:
    report = benchmark_module("report")
    assert report.git_commit(tmp_path) == "unknown"  # not a repository

    def git(*args: str) -> str:
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args]
        return subprocess.run(
            command, cwd=tmp_path, check=True, capture_output=True, text=True
        ).stdout

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    short = git("rev-parse", "--short", "HEAD").strip()
    assert report.git_commit(tmp_path) == short
    (tmp_path / "a.txt").write_text("two\n")
    assert report.git_commit(tmp_path) == short + "-dirty"


def test_a_variant_is_measured_beside_its_target_and_compared_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # servers.py imports its siblings
    servers, report = benchmark_module("servers"), benchmark_module("report")
    head = servers.PROXY_S3_AIO
    old = servers.variant(head, "@baseline", build="baseline")
    cached = servers.variant(head, "-cache", env=(("PROXY_CACHE_DIR", "/c"),))
    assert (old.name, old.base, old.build, old.backend) == (
        "proxy-s3-aio@baseline",
        "proxy-s3-aio",
        "baseline",
        "s3",
    )
    assert (cached.base, cached.env, cached.build) == (
        "proxy-s3-aio",
        (("PROXY_CACHE_DIR", "/c"),),
        "head",
    )
    results = {"big_mbps": {head.name: [900.0, 1000.0], old.name: [800.0, None]}}
    text, _ = report.markdown(results, [head.name, old.name], {}, [], [(head.name, old.name)])
    assert "| proxy-s3-aio / proxy-s3-aio@baseline | 1.19x | n/a | n/a |" in text
