"""The benchmark harness itself stays runnable: a quick run against the proxy and nginx.

Figures are not asserted here (speed is measured by benchmarks/, not by timed tests); only that
the command works end to end, measures both servers and gets nothing but 206s for ranges, and
that a full run's benchmarks/RESULTS.md says when, where and on which commit it ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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


@pytest.mark.timeout(660)  # a new venv with `pip install .`, then two scenarios: not 120 s
def test_quick_benchmark_run(tmp_path: Path) -> None:
    for tool in ["nginx", "wrk", "curl"]:
        require_tool(tool)
    command = [sys.executable, "benchmarks/run.py", "--quick", "--scenarios", "big,ranges"]
    command += ["--targets", "proxy-local,nginx", "--results", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    document = json.loads((tmp_path / "latest.json").read_text())
    # the proxy as deployed: its own venv with `pip install .`, without the test tools
    how = document["settings"]["proxy_python"]
    assert how.startswith("pip install . in a new virtual environment of "), how
    medians = document["medians"]
    for server in ["proxy-local", "nginx"]:
        assert medians["big_mbps"][server] > 0
        assert medians["ranges_rps"][server] > 0
        assert medians["ranges_non206"][server] == 0
    assert "proxy-local / nginx" in (tmp_path / "latest.md").read_text()


def test_ranges_answers_are_checked_by_the_bytes_wrk_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """ranges.lua has no per-answer hook (it capped nginx at wrk's own cost), so the answers
    are judged from wrk's totals: any that was not a 206 of 64 KiB makes the bytes not add up."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    scenarios = benchmark_module("scenarios")
    span, head, requests = scenarios.SPAN, 380, 20_000
    exact = requests * (span + head)
    assert scenarios.odd_answers(requests, exact, head, in_flight=32) == 0
    # answers cut off when wrk stopped, and Content-Range's digits, are within the slack
    assert scenarios.odd_answers(requests, exact + 31 * (span + head), head, 32) == 0
    assert scenarios.odd_answers(requests, exact - requests * 10, head, 32) == 0
    # one whole 64 MiB object among 19,999 ranges
    one_200 = exact - (span + head) + 64 * 1024 * 1024 + head
    assert scenarios.odd_answers(requests, one_200, head, 32) >= 1
    # 50 answers without a body (a 304, a redirect, a 200 of an empty object)
    assert 40 <= scenarios.odd_answers(requests, exact - 50 * span, head, 32) <= 50
    assert "function response(" not in (ROOT / "benchmarks/ranges.lua").read_text()


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


def test_a_cache_target_gets_a_new_cache_directory_at_each_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setenv("PROXY_CACHE_DIR", "/exported/by/the/shell")
    servers = benchmark_module("servers")
    cached = servers.PROXY_S3_AIO_CACHE
    assert (cached.name, cached.base) == ("proxy-s3-aio-cache", "proxy-s3-aio")
    assert servers.has_cache(cached) and not servers.has_cache(servers.PROXY_S3_AIO)
    assert {"proxy-s3-aio-cache", "proxy-s3-boto3-cache"} <= {t.name for t in servers.TARGETS}
    s3 = servers.S3Site("http://127.0.0.1:9000", 9000, "bench")
    site = servers.Site(tmp_path / "data", tmp_path, s3, "python")
    env = servers._proxy_env(cached, site, 8000, 9001, tmp_path / "fresh" / "one")
    assert env["PROXY_CACHE_DIR"] == str(tmp_path / "fresh" / "one")
    assert env["PROXY_CACHE_MAX_SIZE"] == "4GiB"
    assert env["PROXY_S3_CLIENT"] == "aiobotocore"  # the flavour of the target it varies
    assert env["PROXY_S3_ENDPOINT_URL"] == "http://127.0.0.1:9001"
    with pytest.raises(ValueError, match="fresh directory"):
        servers._proxy_env(cached, site, 8000, 9001)
    assert "PROXY_CACHE_DIR" not in servers._proxy_env(servers.PROXY_S3_AIO, site, 8000, 9001)
    # A variant of a variant keeps the first one's environment: the cache on the baseline.
    old = servers.variant(cached, servers.BASELINE, build="baseline")
    assert (old.name, old.base, old.env) == (
        "proxy-s3-aio-cache@baseline",
        "proxy-s3-aio",
        cached.env,
    )
    targets = [servers.PROXY_S3_AIO, cached, servers.PROXY_S3_BOTO3_CACHE, old]
    assert servers.compared(targets) == [
        ("proxy-s3-aio-cache", "proxy-s3-aio"),  # cache / no cache
        ("proxy-s3-aio-cache", "proxy-s3-aio-cache@baseline"),  # today / baseline
    ]


def test_a_restart_for_a_cold_cache_is_no_note_and_forgets_the_warm_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    servers, fleet_module = benchmark_module("servers"), benchmark_module("fleet")
    starts: list[Path] = []

    def launcher() -> object:
        fresh = tmp_path / f"cache-{len(starts)}"
        fresh.mkdir()
        starts.append(fresh)
        return servers.Server(servers.PROXY_S3_AIO_CACHE, 8000 + len(starts), None, fresh)

    with contextlib.ExitStack() as stack:
        fleet = fleet_module.Fleet(stack)
        fleet.launch("proxy-s3-aio-cache", launcher)
        fleet.warm.add("proxy-s3-aio-cache")
        server = fleet.restart("proxy-s3-aio-cache")
        assert (server.port, fleet.notes, fleet.warm) == (8002, [], set())
        assert not starts[0].exists()  # the stopped instance's cache is gone
        fleet.relaunch("proxy-s3-aio-cache", "still busy")
        assert fleet.notes == ["proxy-s3-aio-cache: still busy; restarted"]
        assert starts[2].exists()
    assert not starts[2].exists()


def test_cold_ranges_are_judged_against_the_uncached_proxys_ranges() -> None:
    report = benchmark_module("report")
    results = {
        "ranges_rps": {"proxy-s3-aio": [1000.0], "proxy-s3-aio-cache": [2500.0]},
        "ranges_cold_rps": {"proxy-s3-aio-cache": [850.0, 950.0, 900.0]},
        "coalesce_s3_ratio": {"proxy-s3-aio-cache": [1.02]},
    }
    targets = ["proxy-s3-aio", "proxy-s3-aio-cache"]
    text, verdicts = report.markdown(results, targets, {}, [], [tuple(reversed(targets))])
    assert (
        "| proxy-s3-aio-cache ranges, cold cache: req/s >= 0.9 x proxy-s3-aio ranges: req/s "
        "| 0.90x (900 / 1,000) | PASS |"
    ) in text
    assert "| proxy-s3-aio-cache / proxy-s3-aio | n/a | 2.50x | n/a |" in text
    assert "| proxy-s3-aio-cache coalesce, 32 x 64 MiB: S3 bytes / object size <= 1.05 " in text
    # s3-direct was not measured: its goals are left out, not "no data".
    assert all("s3-direct" not in verdict.goal for verdict in verdicts)


def test_every_scenario_metric_and_goal_has_a_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    scenarios, report = benchmark_module("scenarios"), benchmark_module("report")
    for scenario in scenarios.SCENARIOS:
        assert set(scenario.metrics) <= set(report.METRICS), scenario.name
    for goal in report.GOALS:
        assert goal.label  # names only known metrics
    cold = {scenario.name: scenario.cache for scenario in scenarios.SCENARIOS}
    assert cold["ranges-cold"] == cold["coalesce"] == "cold"
    assert cold["big"] == cold["ranges"] == "warm"


def test_coalescing_clients_count_who_got_the_whole_object() -> None:
    loadgen = benchmark_module("loadgen")
    body = bytes(range(256)) * 1024
    reader = loadgen.Reader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Len") == b""
    assert reader.feed(b"gth: 3\r\n\r\nabc") == b"abc"
    assert reader.feed(b"def") == b"def"
    assert (reader.status, reader.body_bytes) == (200, 6)

    async def serve_twice() -> dict[str, float]:
        served = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal served
            await reader.readuntil(b"\r\n\r\n")
            served += 1
            cut = body if served <= 2 else body[:-1]  # the third client gets one byte less
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + cut)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            digest = hashlib.sha256(body).hexdigest()
            result: dict[str, float] = await loadgen.run_fetch(
                port, "/coalesce.bin", 3, len(body), digest, 10.0
            )
            return result

    result = asyncio.run(serve_twice())
    assert (result["clients"], result["complete"]) == (3, 2)
    assert 0 < result["seconds"] < 10


def test_a_proxy_build_runs_its_own_code_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # run.py is started from the repository: its proxy/ must not shadow the build under test
    # (--baseline's, or the "pip install ." venv's).
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    servers = benchmark_module("servers")
    shadow = tmp_path / "proxy"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    (shadow / "__main__.py").write_text("print('the working directory s proxy')\n")

    def run(command: list[str]) -> str:
        result = subprocess.run(
            [*command, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        return result.stdout.strip()

    assert run([sys.executable, "-m", "proxy"]) == "the working directory s proxy"  # the trap
    assert run(servers.proxy_command(sys.executable)).startswith("python -m proxy 0.")


def test_runs_alternate_the_servers_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever drifts within a run must not always favour the build measured last (--baseline).
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    run = benchmark_module("run")
    keys = ["proxy-s3-aio", "proxy-s3-boto3", "proxy-s3-aio@baseline"]
    orders = [run.run_order(keys, index) for index in range(4)]
    assert orders[0] == orders[2] == keys
    assert orders[1] == orders[3] == list(reversed(keys))


def test_the_listing_scenario_measures_the_proxy_beside_the_paginator(tmp_path: Path) -> None:
    for tool in ["nginx", "wrk", "curl"]:
        require_tool(tool)
    command = [sys.executable, "benchmarks/run.py", "--scenarios", "listing", "--runs", "1"]
    command += ["--size-mib", "1", "--listing-keys", "1200", "--targets", "proxy-s3-aio"]
    command += ["--proxy-python", sys.executable, "--results", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    document = json.loads((tmp_path / "latest.json").read_text())
    assert document["settings"]["listing_keys"] == 1200  # two ListObjectsV2 pages
    medians = {metric: values["proxy-s3-aio"] for metric, values in document["medians"].items()}
    assert medians["listing_complete"] == 1
    assert medians["listing_kps"] > 0 and medians["listing_paginator_kps"] > 0
    ratio = medians["listing_kps"] / medians["listing_paginator_kps"]
    assert medians["listing_vs_paginator"] == pytest.approx(ratio)
    assert 0 < medians["listing_first_line_ms"] < 60_000
    assert medians["listing_rss_growth_mb"] >= 0
    goals = {goal["goal"] for goal in document["goals"]}
    assert "proxy-s3-aio listing: first line, ms <= 100" in goals


def test_the_mounts_targets_measure_ranges_and_redirects(tmp_path: Path) -> None:
    """Issue 24's figures: ranges through the third of three mounts beside the root proxy, and
    the proxy's CPU per 307 of a redirecting S3 mount; each target only in its own scenario."""
    for tool in ["wrk", "curl"]:
        require_tool(tool)
    command = [sys.executable, "benchmarks/run.py", "--scenarios", "ranges,redirect,big"]
    command += ["--targets", "proxy-local,proxy-local-mounts,proxy-s3-aio-redirect"]
    command += ["--runs", "1", "--size-mib", "4", "--seconds", "1", "--quick"]
    command += ["--proxy-python", sys.executable, "--results", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    medians = json.loads((tmp_path / "latest.json").read_text())["medians"]
    assert medians["ranges_rps"]["proxy-local-mounts"] > 0
    assert medians["ranges_non206"]["proxy-local-mounts"] == 0
    assert 0 < medians["redirect_cpu_ms"]["proxy-s3-aio-redirect"] < 50
    assert medians["redirect_non3xx"]["proxy-s3-aio-redirect"] == 0
    # Each target only where it says: no big download through the mounts or the redirect.
    assert set(medians["big_mbps"]) == {"proxy-local"}
    assert "proxy-local-mounts" not in medians.get("redirect_rps", {})


def test_the_baseline_build_runs_without_the_callers_pythonpath(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With ``export PYTHONPATH=$PWD`` (as the tests are run) the --baseline build imported the
    working tree's proxy/: an A/B measured today's code twice."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    servers = benchmark_module("servers")
    run = benchmark_module("run")
    site = servers.Site(tmp_path / "data", tmp_path, None, "python", "baseline-python")
    head = servers.PROXY_S3_REDIRECT
    old = servers.variant(head, servers.BASELINE, build="baseline")
    assert "PYTHONPATH" not in servers._proxy_env(old, site, 8000, None)
    assert servers._proxy_env(head, site, 8000, None)["PYTHONPATH"] == str(ROOT)  # as given
    # A baseline with PROXY_MOUNTS gets the mounts targets measured too.
    assert run.has_mounts("HEAD")
    assert not run.has_mounts("no-such-revision")


def test_the_upload_scenario_measures_proxies_beside_upload_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25's figures: one PUT of the big object through the writable proxies and boto3's
    upload_file straight to SeaweedFS, then 20 uploads at once (S3 proxies: peak RSS)."""
    require_tool("curl")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    uploads, report = benchmark_module("uploads"), benchmark_module("report")
    for scenario in uploads.UPLOAD_SCENARIOS:
        assert set(scenario.metrics) <= set(report.METRICS), scenario.name
    assert uploads.TOKEN not in json.dumps([t.env for t in uploads.UPLOAD_TARGETS])  # its hash
    command = [sys.executable, "benchmarks/run.py", "--scenarios", "upload", "--runs", "1"]
    command += ["--size-mib", "6", "--targets", "proxy-local-upload,proxy-s3-aio-upload,s3-direct"]
    command += ["--proxy-python", sys.executable, "--results", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    medians = json.loads((tmp_path / "latest.json").read_text())["medians"]
    for target in ["proxy-local-upload", "proxy-s3-aio-upload", "s3-direct"]:
        assert medians["upload_mbps"][target] > 0, target
    assert medians["upload20_stored"]["proxy-s3-aio-upload"] == 20
    before = medians["upload20_before_mb"]["proxy-s3-aio-upload"]
    assert 0 < before <= medians["upload20_peak_mb"]["proxy-s3-aio-upload"]
    assert "proxy-local-upload" not in medians["upload20_peak_mb"]  # S3 proxies only
    assert result.stdout.count(b"(vacuumed)") == 1  # after the 20 uploads were deleted
    goals = {goal["goal"] for goal in json.loads((tmp_path / "latest.json").read_text())["goals"]}
    assert "proxy-s3-aio-upload upload, 20 at once: peak RSS MB <= 100" in goals


def test_the_proxies_venv_is_made_from_the_fastest_build_that_can_make_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A plain build (pyenv's default) ran a 64 KiB range ~25% slower than the distribution's
    optimized one: the venv is made from the fastest build found; one that cannot make a venv
    is passed over. The Python peers run on the proxies' interpreter."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    servers = benchmark_module("servers")
    found = servers.interpreters()
    assert [seconds for _, seconds, _ in found] == sorted(seconds for _, seconds, _ in found)
    assert sys.executable in [python for python, _, _ in found]
    # A package with no dependencies stands for the proxy: the venv and pip are what is tested.
    source = tmp_path / "src"
    (source / "tiny").mkdir(parents=True)
    (source / "tiny" / "__init__.py").write_text("")
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "tiny"\nversion = "1"\n'
    )
    broken = (str(tmp_path / "no-python"), 0.01, "3.11.0")
    bases = [broken, (sys.executable, 0.02, "3.11.9")]
    python, how = servers.deploy_python(tmp_path / "venv", source, bases)
    assert python == str(tmp_path / "venv" / "bin" / "python")
    assert how.startswith(f"pip install . in a new virtual environment of {sys.executable} ")
    assert "3.11.9" in how and "no-python 0.01 s" in how
    import_tiny = subprocess.run([python, "-c", "import tiny"], cwd=tmp_path, timeout=60)
    assert import_tiny.returncode == 0

    started: list[list[str]] = []
    monkeypatch.setattr(servers, "spawn", lambda command, log: started.append(command))
    monkeypatch.setattr(servers, "_ready", lambda server, log: server)
    site = servers.Site(tmp_path / "data", tmp_path, None, "/proxies/python")
    servers.start(servers.STARLETTE, site)
    assert started[0][0] == "/proxies/python"


def test_the_chunk_size_table_measures_every_size_on_the_named_interpreter() -> None:
    """benchmarks/chunk_size.py, which README's re-tuning steps name, runs end to end: a row
    per chunk size, each with a download rate and every slow reader served."""
    require_tool("curl")
    command = [sys.executable, "benchmarks/chunk_size.py", "--paths", "local-copy"]
    command += ["--size-mib", "16", "--runs", "1", "--slow", "2", "--slow-seconds", "0.5"]
    command += ["--proxy-python", sys.executable]  # quicker than a new venv
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and lines[1] == f"Proxy: --proxy-python {sys.executable}"
    rows = [line.split() for line in lines if line.startswith("local-copy")]
    assert [row[1] for row in rows] == ["64K", "256K", "1024K", "2048K", "4096K"]
    assert all(float(row[2]) > 0 and row[-1] == "2/2" for row in rows), rows
