"""Command-line clients against the proxy: ffprobe, ffmpeg, curl, wget and aria2c over HTTP.

Each tool runs as a subprocess against every client backend. What a tool downloads is compared
with the source object by SHA-256; that it used Range requests (and got 206 answers) is read
from the tool's own report, or, for ffmpeg, from a relay that records every exchange.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.clients.conftest import BIG_SIZE, DURATION, MEDIA, require_tool
from tests.conftest import MediaTree, RunningServer, sha256

VIDEOS = ["clips/video.webm", "clips/faststart.mp4", "clips/moov-at-end.mp4"]
SEEK_TO = 7  # seconds; the clips are DURATION (8 s) long
FRAME_SIZE = "320x240"  # the testsrc2 pattern's size in conftest.MEDIA
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESUME_AT = BIG_SIZE // 3  # deliberately not aligned to any chunk size


# --- helpers ------------------------------------------------------------------------------


# Every tool here would send 127.0.0.1 through a proxy named in the environment.
CLEAN_ENV = {
    name: value
    for name, value in os.environ.items()
    if name.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
}


def run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a tool with its output captured; a non-zero exit fails with everything it said."""
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, env=CLEAN_ENV
    )
    assert done.returncode == 0, (
        f"{command} exited {done.returncode}\nstdout: {done.stdout[-4000:]}\n"
        f"stderr: {done.stderr[-4000:]}"
    )
    return done


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@functools.cache
def source_sha256(path: Path) -> str:
    """Source objects never change during a session: hash each once."""
    return file_sha256(path)


def write_prefix(source: Path, target: Path, length: int) -> None:
    """The first ``length`` bytes of ``source``: a download interrupted there."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        left = length
        while left:
            chunk = src.read(min(left, 8 * 1024 * 1024))
            assert chunk, "the source is shorter than the prefix"
            dst.write(chunk)
            left -= len(chunk)


def object_url(proxy: RunningServer, key: str, port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or proxy.port}/objects/{key}"


# --- a recording relay ---------------------------------------------------------------------


def parse_head(head: str) -> tuple[str, dict[str, str]]:
    """The first line and the (lower-cased) header fields of an HTTP message head."""
    first, *lines = head.split("\r\n")
    fields: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return first, fields


@dataclass(frozen=True)
class Exchange:
    """One request head as the client sent it, and the proxy's response head to it."""

    request: str
    response: str

    @property
    def range(self) -> str | None:
        return parse_head(self.request)[1].get("range")

    @property
    def status(self) -> int:
        """The response's status code; 0 if no response head came back."""
        return int(parse_head(self.response)[0].split()[1]) if self.response else 0

    @property
    def content_range(self) -> str | None:
        return parse_head(self.response)[1].get("content-range")


@dataclass
class _Connection:
    requests: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)


class RecordingRelay:
    """A TCP relay on 127.0.0.1 in front of the proxy that records every message head.

    Bytes pass through untouched; request heads are recorded as they go up, response heads as
    they come down (bodies are skipped by their Content-Length, which the proxy always sends).
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._connections: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RecordingRelay:
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._acceptor.join(timeout=10)
        for thread in self._threads:
            thread.join(timeout=10)
        self._listener.close()

    def exchanges(self) -> list[Exchange]:
        """Every request, connection by connection, in order; ``response`` is "" if none came."""
        exchanges: list[Exchange] = []
        for connection in self._connections:
            responses = connection.responses + [""] * len(connection.requests)
            exchanges += map(Exchange, connection.requests, responses)
        return exchanges

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection = _Connection()
            self._connections.append(connection)
            thread = threading.Thread(target=self._serve, args=(client, connection), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket, connection: _Connection) -> None:
        with client:
            try:
                upstream = socket.create_connection(("127.0.0.1", self._upstream_port), 10)
            except OSError:
                return
            with upstream:
                client.settimeout(None)
                upstream.settimeout(None)
                down = threading.Thread(
                    target=self._pump_responses, args=(upstream, client, connection), daemon=True
                )
                down.start()
                self._pump_requests(client, upstream, connection)
                down.join(timeout=30)
                if down.is_alive():
                    _shutdown(upstream, socket.SHUT_RDWR)
                    down.join(timeout=10)

    @staticmethod
    def _pump_requests(
        client: socket.socket, upstream: socket.socket, connection: _Connection
    ) -> None:
        pending = b""
        try:
            while data := client.recv(65536):
                pending += data
                while (end := pending.find(b"\r\n\r\n")) >= 0:  # GET and HEAD: no bodies
                    connection.requests.append(pending[:end].decode("latin-1"))
                    pending = pending[end + 4 :]
                upstream.sendall(data)
        except OSError:
            pass
        _shutdown(upstream, socket.SHUT_WR)

    @staticmethod
    def _pump_responses(
        upstream: socket.socket, client: socket.socket, connection: _Connection
    ) -> None:
        pending = b""
        body_left = 0
        until_close = False
        try:
            while data := upstream.recv(256 * 1024):
                view = memoryview(data)
                while view and not until_close:
                    if body_left:
                        taken = min(body_left, len(view))
                        body_left -= taken
                        view = view[taken:]
                        continue
                    pending += view
                    view = memoryview(b"")
                    end = pending.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = pending[:end].decode("latin-1")
                    view = memoryview(pending[end + 4 :])
                    pending = b""
                    index = len(connection.responses)
                    connection.responses.append(head)
                    first, fields = parse_head(head)
                    status = int(first.split()[1])
                    method = (
                        connection.requests[index].split(" ", 1)[0]
                        if index < len(connection.requests)
                        else "GET"
                    )
                    if method == "HEAD" or status in (204, 304):
                        body_left = 0
                    elif "content-length" in fields:
                        body_left = int(fields["content-length"])
                    else:
                        until_close = True
                client.sendall(data)
        except OSError:
            pass
        _shutdown(client, socket.SHUT_WR)


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


# --- ffprobe and ffmpeg ----------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(MEDIA))
def test_ffprobe_reads_the_duration_over_http(
    media_proxy: RunningServer, client_media: MediaTree, key: str
) -> None:
    ffprobe = require_tool("ffprobe")
    with RecordingRelay(media_proxy.port) as relay:
        command = [ffprobe, "-v", "error", "-show_entries", "format=duration"]
        command += ["-of", "default=nw=1:nk=1", object_url(media_proxy, key, relay.port)]
        said = run(command, timeout=60).stdout.strip()
    assert re.fullmatch(r"\d+\.\d+", said), f"no duration: {said!r}"
    assert float(said) == pytest.approx(DURATION, abs=0.3)

    size = (client_media.root / key).stat().st_size
    exchanges = relay.exchanges()
    check_ranges_answered(exchanges, size)
    if key == "clips/moov-at-end.mp4":  # the index is at the tail: a range must go there
        assert any(range_start(e) >= size // 2 for e in exchanges), [e.range for e in exchanges]


def grab_frame(
    ffmpeg: str, proxy: RunningServer, key: str, seconds: int, out: Path
) -> list[Exchange]:
    """A frame at ``seconds`` written to ``out`` as PNG, with what ffmpeg asked the proxy."""
    with RecordingRelay(proxy.port) as relay:
        command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-ss", str(seconds)]
        command += ["-i", object_url(proxy, key, relay.port), "-frames:v", "1", "-y", str(out)]
        run(command, timeout=60)
    return relay.exchanges()


def png_size(ffprobe: str, path: Path) -> str:
    command = [ffprobe, "-v", "error", "-select_streams", "v:0"]
    command += ["-show_entries", "stream=width,height", "-of", "csv=s=x:p=0", str(path)]
    return run(command, timeout=30).stdout.strip()


def range_start(exchange: Exchange) -> int:
    """Where the (single, open or closed) range the client asked for starts."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", exchange.range or "")
    assert match, f"not a single byte range: {exchange.request!r}"
    return int(match[1])


def check_ranges_answered(exchanges: list[Exchange], size: int) -> None:
    """Every request asked for a byte range and got exactly that range back in a 206."""
    assert exchanges, "no request reached the proxy"
    for exchange in exchanges:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", exchange.range or "")
        assert match, f"not a single byte range: {exchange.request!r}"
        last = int(match[2]) if match[2] else size - 1
        assert exchange.status == 206, (exchange.request, exchange.response)
        assert exchange.content_range == f"bytes {match[1]}-{min(last, size - 1)}/{size}", (
            exchange.request,
            exchange.response,
        )


@pytest.mark.parametrize("key", VIDEOS)
def test_ffmpeg_seeks_by_range_and_writes_a_frame(
    media_proxy: RunningServer, client_media: MediaTree, tmp_path: Path, key: str
) -> None:
    ffmpeg = require_tool("ffmpeg")
    ffprobe = require_tool("ffprobe")
    size = (client_media.root / key).stat().st_size
    late = tmp_path / "late.png"
    early = tmp_path / "early.png"
    seeking = grab_frame(ffmpeg, media_proxy, key, SEEK_TO, late)
    opening = grab_frame(ffmpeg, media_proxy, key, 0, early)

    for frame in (late, early):
        assert frame.is_file(), f"ffmpeg exited 0 but wrote no {frame.name}"
        assert frame.read_bytes().startswith(PNG_MAGIC), frame.name
        assert png_size(ffprobe, frame) == FRAME_SIZE, frame.name
    # testsrc2 moves: the same picture twice would mean ffmpeg ignored -ss
    assert sha256(late.read_bytes()) != sha256(early.read_bytes())

    check_ranges_answered(seeking, size)
    check_ranges_answered(opening, size)
    # The seek itself: a range into the second half of the object that opening at 0 s never
    # asked for (the moov or the cues at the tail are read by both runs).
    jumps = {range_start(e) for e in seeking} - {range_start(e) for e in opening}
    assert any(size // 2 <= start < size for start in jumps), (
        f"no range request for the 7 s data: seeking {[e.range for e in seeking]}, "
        f"opening {[e.range for e in opening]} (size {size})"
    )


# --- resuming and segmented downloads of big.bin ---------------------------------------------


@pytest.fixture
def big_download(tmp_path: Path) -> Iterator[Path]:
    """Where big.bin is downloaded; removed after the test, whatever happened."""
    path = tmp_path / "big.bin"
    yield path
    path.unlink(missing_ok=True)


def test_curl_resumes_big_bin(
    media_proxy: RunningServer, client_media: MediaTree, tmp_path: Path, big_download: Path
) -> None:
    curl = require_tool("curl")
    source = client_media.root / "big.bin"
    write_prefix(source, big_download, RESUME_AT)
    headers = tmp_path / "headers.txt"
    command = [curl, "-q", "-sSf", "-C", "-", "-o", str(big_download), "-D", str(headers)]
    command += ["-w", "%{http_code} %{size_download}", object_url(media_proxy, "big.bin")]
    done = run(command, timeout=100)

    assert done.stdout == f"206 {BIG_SIZE - RESUME_AT}"
    received = headers.read_text("latin-1")
    assert re.search(
        rf"(?im)^content-range: bytes {RESUME_AT}-{BIG_SIZE - 1}/{BIG_SIZE}\r?$", received
    ), received
    assert big_download.stat().st_size == BIG_SIZE
    assert file_sha256(big_download) == source_sha256(source)


def test_wget_resumes_big_bin(
    media_proxy: RunningServer, client_media: MediaTree, tmp_path: Path, big_download: Path
) -> None:
    wget = require_tool("wget")
    source = client_media.root / "big.bin"
    write_prefix(source, big_download, RESUME_AT)
    log = tmp_path / "wget.log"
    command = [wget, "--no-config", "-c", "-S", "-O", str(big_download), "-o", str(log)]
    command += ["--tries=1", "--timeout=60", object_url(media_proxy, "big.bin")]
    run(command, timeout=100)

    said = log.read_text("latin-1")
    assert re.search(r"(?m)^\s*HTTP/1\.1 206 ", said), said
    assert re.search(
        rf"(?im)^\s*content-range: bytes {RESUME_AT}-{BIG_SIZE - 1}/{BIG_SIZE}$", said
    ), said
    assert big_download.stat().st_size == BIG_SIZE
    assert file_sha256(big_download) == source_sha256(source)


ARIA2_ENTRY = re.compile(r"CUID#(\d+) - (Requesting|Response received):\n(.*?)\n\n", re.S)


def test_aria2c_downloads_big_bin_in_segments(
    media_proxy: RunningServer, client_media: MediaTree, tmp_path: Path, big_download: Path
) -> None:
    aria2c = require_tool("aria2c")
    source = client_media.root / "big.bin"
    log = tmp_path / "aria2.log"
    command = [aria2c, "--no-conf", "-x", "8", "-s", "8", "-k", "1M", "--file-allocation=none"]
    command += ["-d", str(big_download.parent), "-o", big_download.name]
    command += ["--allow-overwrite=true", "--auto-file-renaming=false"]
    command += ["--check-certificate=false", "--disable-ipv6=true", "--max-tries=2"]
    command += ["--timeout=60", f"--log={log}", "--log-level=info", "--console-log-level=warn"]
    command += ["--summary-interval=0", object_url(media_proxy, "big.bin")]
    run(command, timeout=100)

    said = log.read_text("utf-8", errors="replace")
    assert "[ERROR]" not in said, said[-4000:]  # no failure hidden by a retry
    ranged: set[str] = set()  # the connections (CUIDs) that got a range answered
    pending: dict[str, str] = {}  # CUID -> its request still waiting for a response
    for cuid, kind, head in ARIA2_ENTRY.findall(said):
        head = head.replace("\n", "\r\n")
        if kind == "Requesting":
            # near the end aria2c drops a request whose segment another connection finished
            pending[cuid] = head
            continue
        assert cuid in pending, f"CUID#{cuid}: a response to no request:\n{head}"
        exchange = Exchange(pending.pop(cuid), head)
        if exchange.range is None:  # the first request: the whole object, cut off later
            assert exchange.status == 200, exchange.response
        else:
            check_ranges_answered([exchange], BIG_SIZE)
            ranged.add(cuid)
    assert len(ranged) >= 2, f"ranged connections {sorted(ranged)}; log:\n{said[-4000:]}"
    assert big_download.stat().st_size == BIG_SIZE
    assert file_sha256(big_download) == source_sha256(source)
