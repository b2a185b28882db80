"""The proxy against its peers, on loopback: one command prepares, measures, reports, cleans up.

  python benchmarks/run.py [--size-mib 1024] [--runs 5] [--scenarios big,ranges,...]
                           [--targets proxy-local,nginx,...] [--quick] [--profile DIR]
                           [--baseline REV] [--listing-keys 100000]

Writes a random object (a 64 MiB one for the coalesce scenario, and a tiny one) to a temporary
directory, uploads them to a public-read SeaweedFS bucket, starts every server, runs each
scenario --runs times (servers interleaved within each run; a cache target's cache first made
warm or cold as the scenario needs), stops everything by PID and prints medians, ratios and
goals (PASS/MISS);
the same goes to benchmarks/results/latest.md and latest.json. A full run (every scenario and
target, without --quick or --profile) also writes benchmarks/RESULTS.md: the report under the
date, CPU, commit and command line. Only ratios within one run mean anything on a shared
machine. --quick (64 MiB, 1 run, 2 s) is the smoke test: it exits non-zero when any scenario
produced no data. --baseline REV also measures each proxy target as built from git revision REV
(target name + "@baseline"), interleaved with today's build in every run: the way to tell a
change's effect from the machine's noise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from fleet import RELAYED, Fleet
from procs import free_port, spawn, stop, wait_http
from profiles import recording
from report import Provenance, Results, cpu_model, git_commit, markdown, results_document, write
from scenarios import (
    ALIASES,
    LISTING_PREFIX,
    SCENARIOS,
    SETTLE_TIMEOUT_S,
    Config,
    NoData,
    Scenario,
    settle,
    warm,
)
from seaweed import seaweedfs_bucket
from servers import (
    BASELINE,
    BIG,
    COALESCE,
    COALESCE_SIZE,
    TARGETS,
    TINY,
    Interpreter,
    Server,
    Site,
    Target,
    compared,
    deploy_python,
    has_cache,
    interpreters,
    start,
    start_proxy,
    uses_mounts,
    variant,
)
from uploads import UPLOAD_SCENARIOS, UPLOAD_TARGETS
from uploads import prepare as prepare_uploads

# Issue 25's upload scenario and its proxies (writes on) are defined in uploads.py.
SCENARIOS.extend(UPLOAD_SCENARIOS)
TARGETS.extend(UPLOAD_TARGETS)

HERE = Path(__file__).resolve().parent
RESULTS_FILE = HERE / "RESULTS.md"  # the latest full run's report, committed
MIB = 1024 * 1024
Measured = dict[str, float | None]
BUSY_NOTE_S = 1.0  # report a server that needed longer than this to become idle
TOOLS = {"nginx": "nginx", "wrk": "wrk", "curl": "curl"}  # command: Debian package
SCENARIOS_DEFAULT = (
    "big,ranges,memory,fairness,disconnect,ttfb,ranges-cold,coalesce,redirect,listing,upload"
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the big object")
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (median)")
    parser.add_argument("--seconds", type=float, default=10.0, help="ranges/memory/fairness")
    parser.add_argument("--scenarios", default=SCENARIOS_DEFAULT)
    parser.add_argument("--targets", default=",".join(target.name for target in TARGETS))
    parser.add_argument("--quick", action="store_true", help="64 MiB, 1 run, 2 s: smoke test")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the proxies during each scenario's first run into DIR (see profiles.py)",
    )
    parser.add_argument(
        "--proxy-python",
        metavar="PATH",
        help="the proxies' interpreter (default: a new venv with `pip install .`, as deployed)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the proxies as built from this git revision (name@baseline)",
    )
    parser.add_argument(
        "--listing-keys",
        type=int,
        default=100_000,
        help="objects the listing scenario lists (uploaded empty, under list/)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.runs, args.seconds = 64, 1, 2.0
        args.listing_keys = min(args.listing_keys, 10_000)
    return args


def missing_tools() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [package for tool, package in TOOLS.items() if shutil.which(tool, path=path) is None]


def pick(names: str, known: dict[str, object], kind: str) -> list[str]:
    chosen = [n for name in names.split(",") if name for n in ALIASES.get(name, (name,))]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise SystemExit(f"unknown {kind}: {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def full_run(args: argparse.Namespace, scenarios: Sequence[str], targets: Sequence[str]) -> bool:
    """Every scenario on every target, without --quick and without py-spy taking CPU: the
    runs whose report goes to RESULTS.md."""
    every_scenario = {scenario.name for scenario in SCENARIOS} <= set(scenarios)
    every_target = {target.name for target in TARGETS} <= set(targets)
    return every_scenario and every_target and not args.quick and args.profile is None


def write_random(path: Path, size: int) -> str:
    """size random bytes into path (16 MiB at a time); returns their sha256 (hex)."""
    digest = hashlib.sha256()
    with path.open("wb") as sink:
        for offset in range(0, size, 16 * MIB):
            chunk = os.urandom(min(16 * MIB, size - offset))
            digest.update(chunk)
            sink.write(chunk)
    return digest.hexdigest()


def write_data(directory: Path, size: int) -> tuple[list[Path], str]:
    """The big random object of size bytes, the coalesce scenario's random one and a tiny text
    object (last); and the coalesce object's sha256."""
    directory.mkdir(parents=True)
    write_random(directory / BIG, size)
    coalesce_sha256 = write_random(directory / COALESCE, COALESCE_SIZE)
    tiny = directory / TINY
    tiny.write_text("ok\n", encoding="ascii")
    return [directory / BIG, directory / COALESCE, tiny], coalesce_sha256


def upload_listing(site: Site, count: int) -> None:
    """The listing scenario's ``count`` empty objects below LISTING_PREFIX (listing.py upload)."""
    assert site.s3 is not None
    print(f"uploading {count:,} empty objects for the listing scenario", flush=True)
    command = [sys.executable, str(HERE / "listing.py"), "upload", site.s3.endpoint_url]
    command += [site.s3.bucket, LISTING_PREFIX, str(count)]
    subprocess.run(command, check=True, capture_output=True, timeout=1800)


def start_relay(site: Site, stack: contextlib.ExitStack) -> tuple[int, Path]:
    """relay.py in front of SeaweedFS; returns (its port, its log)."""
    assert site.s3 is not None
    port, log = free_port(), site.work_dir / "relay.log"
    command = [sys.executable, str(HERE / "relay.py"), str(port), str(site.s3.port), str(log)]
    process = spawn(command, site.work_dir / "relay.out")
    stack.callback(stop, process)
    tiny_url = f"http://127.0.0.1:{port}/{site.s3.bucket}/{TINY}"
    wait_http(tiny_url, process, site.work_dir / "relay.out", 30)
    return port, log


def start_all(targets: Sequence[Target], site: Site, fleet: Fleet, relayed: bool) -> Path | None:
    """Every target; with relayed, also a second instance of each S3 proxy behind the relay.
    Returns the relay's log (None without relay)."""
    for target in targets:
        fleet.launch(target.name, partial(start, target, site))
    s3_proxies = [t for t in targets if t.role == "proxy" and t.backend == "s3"]
    if not relayed or not s3_proxies:
        return None
    port, log = start_relay(site, fleet.stack)
    for target in s3_proxies:
        fleet.launch(target.name + RELAYED, partial(start_proxy, target, site, port))
    return log


def prepare_cache(scenario: Scenario, config: Config, fleet: Fleet, key: str) -> Server:
    """A cache target's cache as the scenario needs it: cold = the server restarted with an
    empty cache directory; warm = the whole big object read through it once since it started
    (not timed)."""
    if scenario.cache == "cold":
        return fleet.restart(key)
    server = fleet.servers[key]
    if scenario.cache == "warm" and key not in fleet.warm:
        try:
            print(f"  warming {key}: {warm(config, server)}", flush=True)
        except NoData as error:
            print(f"  warming {key} FAILED: {error}", flush=True)
        else:
            fleet.warm.add(key)
    return server


def measure_once(scenario: Scenario, config: Config, server: Server, run_index: int) -> Measured:
    label = f"  {scenario.name} {server.target.name} run {run_index + 1}:"
    started = time.monotonic()
    try:
        measured: Measured = dict(scenario.measure(config, server, run_index))
    except NoData as error:
        print(f"{label} NO DATA: {error}", flush=True)
        return dict.fromkeys(scenario.metrics)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in measured.items() if v is not None)
    print(f"{label} {shown} ({time.monotonic() - started:.1f} s)", flush=True)
    return measured


def py_spy() -> str | None:
    """py-spy from PATH or next to this Python (a virtualenv's bin)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def run_scenario(
    scenario: Scenario,
    config: Config,
    fleet: Fleet,
    runs: int,
    results: Results,
    profile: Path | None = None,
) -> None:
    """Run the scenario `runs` times; within each run every server once, in the order of
    `run_order` (reversed every other run), each first left to become idle (or restarted when it
    does not); a cache target's cache made warm or cold first (see prepare_cache). With profile,
    the proxies' first runs are recorded by py-spy into that directory."""
    for run_index in range(runs):
        for key in run_order(fleet.keys(relayed=scenario.relayed), run_index):
            server = fleet.servers[key]
            if not scenario.covers(server.target):
                continue
            if has_cache(server.target):
                server = prepare_cache(scenario, config, fleet, key)
            busy = settle(server)
            if busy is None:
                reason = f"still busy {SETTLE_TIMEOUT_S:.0f} s before {scenario.name} run "
                server = fleet.relaunch(key, reason + str(run_index + 1))
            elif busy > BUSY_NOTE_S:
                print(f"  ({key} was still busy for {busy:.1f} s before this run)", flush=True)
            spy = py_spy() if profile is not None and server.target.role == "proxy" else None
            if spy is None or run_index > 0 or server.pid is None:
                measured = measure_once(scenario, config, server, run_index)
            else:
                assert profile is not None
                name = f"{scenario.name}-{key}"
                raw, summary = profile / f"{name}.raw", profile / f"{name}.txt"
                with recording(server.pid, raw, summary, spy):
                    measured = measure_once(scenario, config, server, run_index)
            for metric, value in measured.items():
                results.setdefault(metric, {}).setdefault(server.target.name, []).append(value)


def run_order(keys: Sequence[str], run_index: int) -> list[str]:
    """The servers in their order on even runs, reversed on odd ones: whatever drifts within a
    run (SeaweedFS warming up, a neighbour's load) then favours no server, --baseline's builds
    included, which would otherwise always run after today's."""
    return list(keys) if run_index % 2 == 0 else list(reversed(keys))


def no_data(
    results: Results, scenarios: Sequence[Scenario], targets: Sequence[Target]
) -> list[str]:
    """'scenario/target' for every applicable pair without a single figure."""
    empty = []
    for scenario in scenarios:
        for target in targets:
            if not scenario.covers(target):
                continue
            figures = [
                value
                for metric in scenario.metrics
                for value in results.get(metric, {}).get(target.name, [])
                if value is not None
            ]
            if not figures:
                empty.append(f"{scenario.name}/{target.name}")
    return empty


@contextlib.contextmanager
def environment(
    work_dir: Path, files: Sequence[Path], need_s3: bool, python: str, baseline: str | None
) -> Iterator[Site]:
    data_dir = files[0].parent
    if not need_s3:
        yield Site(data_dir, work_dir, None, python, baseline)
        return
    print("starting SeaweedFS and uploading the objects", flush=True)
    with seaweedfs_bucket(work_dir, files) as s3:
        yield Site(data_dir, work_dir, s3, python, baseline)


def has_mounts(revision: str) -> bool:
    """Whether the proxy as of git revision ``revision`` has PROXY_MOUNTS (proxy/mounts.py)."""
    found = subprocess.run(
        ["git", "-C", str(HERE.parent), "cat-file", "-e", f"{revision}:proxy/mounts.py"],
        capture_output=True,
        timeout=60,
    )
    return found.returncode == 0


def baseline_python(work_dir: Path, revision: str, bases: list[Interpreter]) -> str:
    """A virtual environment with the proxy as of git revision `revision` (git archive, then
    pip install), made from the first of ``bases`` that can (as the measured build's was);
    raises SystemExit when either step fails."""
    source = work_dir / "baseline-src"
    source.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", "--format=tar", revision],
        capture_output=True,
        timeout=120,
    )
    if archive.returncode != 0:
        raise SystemExit(f"--baseline {revision}: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    python, how = deploy_python(work_dir / "baseline-venv", source, bases)
    if python == sys.executable:
        raise SystemExit(f"--baseline {revision}: {how}")
    return python


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(sys.orig_argv if argv is None else ["python", "benchmarks/run.py", *argv])
    started, commit = datetime.now(UTC), git_commit(HERE.parent)
    if missing := missing_tools():
        print(f"missing tools; install them with: apt-get install -y {' '.join(missing)}")
        return 2
    if args.profile is not None:
        if py_spy() is None:
            print("--profile needs py-spy: pip install py-spy")
            return 2
        args.profile.mkdir(parents=True, exist_ok=True)
    by_name = {target.name: target for target in TARGETS}
    scenario_by_name = {scenario.name: scenario for scenario in SCENARIOS}
    targets = [by_name[name] for name in pick(args.targets, dict(by_name), "targets")]
    if args.baseline:
        mounts = has_mounts(args.baseline)  # a baseline may predate PROXY_MOUNTS
        targets += [
            variant(t, BASELINE, build="baseline")
            for t in targets
            if t.role == "proxy" and (mounts or not uses_mounts(t))
        ]
    scenarios = [
        scenario_by_name[n] for n in pick(args.scenarios, dict(scenario_by_name), "scenarios")
    ]
    size = args.size_mib * MIB
    settings: dict[str, object] = {"size_mib": args.size_mib, "runs": args.runs}
    settings |= {"seconds": args.seconds, "quick": args.quick}
    if args.baseline:
        settings["baseline"] = args.baseline
    results: Results = {}
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp, contextlib.ExitStack() as stack:
        work_dir = Path(tmp)
        print(f"writing {args.size_mib} MiB of random data to {work_dir}", flush=True)
        files, coalesce_sha256 = write_data(work_dir / "data", size)
        deploys = args.proxy_python is None and any(t.role == "proxy" for t in targets)
        bases = interpreters() if args.baseline or deploys else []  # ~0.5 s: only when used
        if args.proxy_python is not None:
            python, how = args.proxy_python, f"--proxy-python {args.proxy_python}"
        elif deploys:
            print("installing the proxy into a new virtual environment (pip install .)", flush=True)
            python, how = deploy_python(work_dir / "deploy-venv", bases=bases)
        else:
            python, how = sys.executable, "no proxy measured"
        settings["proxy_python"] = how
        baseline = None
        if args.baseline:
            print(f"installing the proxy as of {args.baseline} (--baseline)", flush=True)
            baseline = baseline_python(work_dir, args.baseline, bases)
        need_s3 = any(t.backend == "s3" for t in targets)
        site = stack.enter_context(environment(work_dir, files, need_s3, python, baseline))
        prepare_uploads(site)
        listing_keys = 0
        if site.s3 is not None and any(s.name == "listing" for s in scenarios):
            settings["listing_keys"] = listing_keys = args.listing_keys
            upload_listing(site, listing_keys)
        fleet = Fleet(stack)
        relay_log = start_all(targets, site, fleet, any(s.relayed for s in scenarios))
        config = Config(
            size, args.seconds, 20, idle_timeout_s=10.0, relay_log=relay_log,
            coalesce_sha256=coalesce_sha256, listing_keys=listing_keys,
            s3_endpoint_url=site.s3.endpoint_url if site.s3 else "",
            s3_bucket=site.s3.bucket if site.s3 else "",
        )  # fmt: skip
        for scenario in scenarios:
            print(f"{scenario.name}: {args.runs} run(s)", flush=True)
            run_scenario(scenario, config, fleet, args.runs, results, args.profile)
        print("stopping the servers", flush=True)
    pairs = compared(targets)
    text, verdicts = markdown(results, [t.name for t in targets], settings, fleet.notes, pairs)
    write(args.results, text, results, verdicts, settings, fleet.notes)
    print("\n" + text + f"\n(also in {args.results}/latest.md and latest.json)")
    if full_run(args, [s.name for s in scenarios], [t.name for t in targets]):
        provenance = Provenance(
            started, datetime.now(UTC), cpu_model(), os.cpu_count(), commit, command
        )
        RESULTS_FILE.write_text(results_document(text, provenance), encoding="utf-8")
        print(f"(and, as the latest full run, in {RESULTS_FILE})")
    if empty := no_data(results, scenarios, targets):
        print(f"NO DATA for: {', '.join(empty)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
