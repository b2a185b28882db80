"""Processes for the benchmark: start and stop by PID, wait for HTTP, sample /proc.

Everything listens on 127.0.0.1. Memory is the RSS summed over a process and its descendants;
CPU time is utime + stime from /proc/<pid>/stat (all threads, in clock ticks).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(
    command: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start command with stdout and stderr appended to log."""
    with log.open("ab") as sink:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
        )


def stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process by its PID, wait up to grace_s, then SIGKILL; always reap it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Poll url until it answers 2xx; fail early when the process exits."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited ({process.returncode}); see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
                return
        except (OSError, urllib.error.HTTPError) as error:
            last = error
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout_s:.0f} s ({last!r}); see {log}")


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/*/children)."""
    found = [pid]
    for current in found:  # grows while iterating: breadth-first
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                found.extend(int(child) for child in children.read_text().split())
            except OSError:
                continue
    return found


def _read_sum(pids: Sequence[int], value: Callable[[int], int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += value(pid)
        except (OSError, ValueError, IndexError):
            continue  # the process ended between listing and reading
    return total


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident set size summed over pids."""
    return PAGE_SIZE * _read_sum(
        pids, lambda pid: int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    )


def _cpu_ticks_of(pid: int) -> int:
    # Fields after the command name, which may contain spaces: state is [0], utime [11].
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_ticks(pids: Sequence[int]) -> int:
    """utime + stime in clock ticks, summed over pids."""
    return _read_sum(pids, _cpu_ticks_of)


class Sampler:
    """A thread that records (monotonic time, read()) every interval_s until stopped."""

    def __init__(self, read: Callable[[], int], interval_s: float = 0.05) -> None:
        self.samples: list[tuple[float, int]] = []
        self._read = read
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self._read()))
            if self._stop.wait(self._interval_s):
                return

    def peak(self) -> int:
        return max((value for _, value in self.samples), default=0)

    def quiet_since(self, start: float, quiet_s: float) -> float | None:
        """The first sample time >= start after which the value stays flat for quiet_s."""
        samples = list(self.samples)
        for index, (at, value) in enumerate(samples):
            if at < start:
                continue
            for later_at, later_value in samples[index + 1 :]:
                if later_value != value:
                    break
                if later_at >= at + quiet_s:
                    return at
        return None
