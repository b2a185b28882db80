"""py-spy profiles of the proxy under a scenario's load: where its CPU goes.

run.py --profile DIR records each proxy while it serves the first run of every scenario
(``py-spy record --nonblocking``, 100 samples/s, every thread, idle samples left out) and
writes DIR/<scenario>-<server>.txt: the functions most often on the CPU (self) and most
often on the stack (inclusive), as shares of all samples, plus py-spy's raw stacks in
<scenario>-<server>.raw for flame graphs. Profiling costs CPU on a machine this small: run it
apart from the measured runs (the figures of a profiled run are not comparable).

How to read them: without pausing the process (--nonblocking) a sample succeeds more often
while the thread sits in a system call than while the interpreter runs, so socket writes and
file reads weigh more than their share; and a coroutine resumed by the event loop shows the
stack from the loop's callback up, not the one that awaited, so inclusive shares of the outer
layers (uvicorn's cycle, the middleware) are lower bounds.

  python benchmarks/profiles.py FILE.raw [TOP]   # summarise raw stacks again
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

RATE_HZ = 100
TOP = 30
# One frame of py-spy's raw output: "function (path/to/file.py:123)"; line numbers dropped.
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def _where(frame: str) -> str:
    """``function (file.py)``: the frame without its line (py-spy already shortens paths)."""
    match = _FRAME.match(frame.strip())
    return frame.strip() if match is None else f"{match['function']} ({match['file']})"


def summarise(lines: Iterable[str], top: int = TOP) -> str:
    """A Markdown summary of py-spy raw (collapsed) stacks: ``frame;frame;... count``."""
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_where(frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for where in set(frames):
            inclusive[where] += count
    if total == 0:
        return "no samples\n"
    rows = [f"{total} samples ({RATE_HZ}/s, every thread, idle left out)", ""]
    for title, counter in (("self (on the CPU)", self_counts), ("inclusive", inclusive)):
        rows += [f"| {title} | share |", "| --- | --- |"]
        rows += [
            f"| `{where}` | {100 * count / total:.1f}% |"
            for where, count in counter.most_common(top)
        ]
        rows.append("")
    return "\n".join(rows)


@contextmanager
def recording(pid: int, raw: Path, summary: Path, py_spy: str = "py-spy") -> Iterator[None]:
    """py-spy records ``pid`` while the block runs; then the summary is written."""
    command = [py_spy, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw"]
    command += ["--output", str(raw), "--nonblocking"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    text = summarise(raw.read_text().splitlines()) if raw.exists() else "py-spy wrote nothing\n"
    summary.write_text(text)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    top = int(argv[1]) if len(argv) > 1 else TOP
    print(summarise(Path(argv[0]).read_text().splitlines(), top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
