"""Real clients against real proxies: generated media, three backends, a page on another origin.

The media are made once per session by ffmpeg. The backends are the local disk (async) and both
S3 flavours on SeaweedFS; each proxy allows CORS from the page server's origin only.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.storage.mediatypes import media_type_for
from proxy.testing.s3servers import S3Server, upload_tree
from tests.conftest import MediaTree, RunningServer, StartServer, s3_settings, settings_for

DURATION = 8.0  # seconds of every generated clip
BIG_SIZE = 256 * 1024 * 1024
CLIENT_BACKENDS = [
    "local-async",
    "seaweedfs-boto3",
    "seaweedfs-aiobotocore",
    "seaweedfs-aiobotocore-cache",  # players seeking through the slice cache
]

# name -> ffmpeg arguments after the lavfi inputs (a test pattern and a tone, DURATION long)
_VIDEO = ["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"]
_AUDIO = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
_H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25"]
MEDIA: dict[str, list[str]] = {
    "clips/video.webm": _VIDEO
    + _AUDIO
    + ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k"]
    + ["-g", "25", "-c:a", "libopus", "-b:a", "64k"],
    # faststart: the moov atom first; without it the moov sits at the end, so a player must
    # range-read the tail before it can play.
    "clips/faststart.mp4": _VIDEO + _AUDIO + _H264 + ["-c:a", "aac", "-movflags", "+faststart"],
    "clips/moov-at-end.mp4": _VIDEO + _AUDIO + _H264 + ["-c:a", "aac"],
    "clips/audio.mp3": _AUDIO + ["-c:a", "libmp3lame", "-b:a", "96k"],
    "clips/audio.opus": _AUDIO + ["-c:a", "libopus", "-b:a", "64k"],
}


def require_tool(name: str) -> str:
    """The tool's path. Missing: a failure in CI (CI=true), a skip on a developer's machine."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (tests/run.sh installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def client_media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaTree]:
    """The generated clips and a BIG_SIZE random object, in a tree of their own."""
    ffmpeg = require_tool("ffmpeg")
    base = tmp_path_factory.mktemp("client-media")
    root = base / "root"
    (root / "clips").mkdir(parents=True)
    for key, arguments in MEDIA.items():
        command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *arguments]
        command += ["-t", str(DURATION), str(root / key)]
        subprocess.run(command, check=True, timeout=300)
    with open(root / "big.bin", "wb") as big:
        for _ in range(BIG_SIZE // (16 * 1024 * 1024)):
            big.write(os.urandom(16 * 1024 * 1024))
    yield MediaTree(root=root, outside=base)
    (root / "big.bin").unlink()  # pytest keeps recent temp dirs: do not leave 256 MiB behind


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class PageServer:
    """Static pages on their own origin (another port), so the browser's requests are CORS."""

    root: Path
    origin: str


@contextlib.contextmanager
def page_server(root: Path) -> Iterator[PageServer]:
    """Static pages from ``root`` on an origin of their own, stopped on exit."""

    def handler(*args: object, **kwargs: object) -> _Quiet:
        return _Quiet(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield PageServer(root=root, origin=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageServer]:
    with page_server(tmp_path_factory.mktemp("pages")) as server:
        yield server


@pytest.fixture(scope="session", params=CLIENT_BACKENDS)
def media_proxy(
    request: pytest.FixtureRequest,
    client_media: MediaTree,
    pages: PageServer,
    serve: StartServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> RunningServer:
    """A proxy serving ``client_media`` on one backend, open to the page origin (CORS)."""
    kind, flavor, *cache = request.param.split("-")
    options: dict[str, object] = {"cors_allow_origins": pages.origin, "chunk_size": 256 * 1024}
    if kind == "local":
        return serve(settings_for(client_media, flavor, **options))
    if cache:
        options["cache_dir"] = tmp_path_factory.mktemp("client-cache")
    s3: S3Server = request.getfixturevalue("seaweedfs_with_client_media")
    return serve(s3_settings(s3, flavor, **options))


@pytest.fixture(scope="session")
def seaweedfs_with_client_media(seaweedfs: S3Server, client_media: MediaTree) -> S3Server:
    """SeaweedFS holding the client media too, each object with its media type."""
    upload_tree(seaweedfs, client_media.root, content_type=media_type_for)
    return seaweedfs
