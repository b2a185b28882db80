"""The benchmark harness itself stays runnable: a quick run against the proxy and nginx.

Figures are not asserted here (speed is measured by benchmarks/, not by timed tests); only that
the command works end to end, measures both servers and gets nothing but 206s for ranges.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tests.clients.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent


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
