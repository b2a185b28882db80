"""The benchmark harness itself stays runnable: a quick run against the proxy and nginx.

Figures are not asserted here (speed is measured by benchmarks/, not by timed tests); only that
the command works end to end, measures both servers and gets nothing but 206s for ranges.
"""

from __future__ import annotations

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
    medians = json.loads((tmp_path / "latest.json").read_text())["medians"]
    for server in ["proxy-local", "nginx"]:
        assert medians["big_mbps"][server] > 0
        assert medians["ranges_rps"][server] > 0
        assert medians["ranges_non206"][server] == 0
    assert "proxy-local / nginx" in (tmp_path / "latest.md").read_text()
