"""``python -m proxy`` (or ``media-proxy``): the command line; ``PROXY_*`` settings, options."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qs, urlsplit

import uvicorn

from proxy.auth import hash_token, signed_url
from proxy.config import DEFAULT_LOCAL_ROOT, Settings
from proxy.sample import write_sample
from proxy.server import uvicorn_options
from proxy.settingsdoc import USAGE_EXIT, listing, markdown_table, settings_or_exit
from proxy.version import __version__

DESCRIPTION = """\
Stream stored objects (video, audio, build artifacts) from a local directory or an S3 bucket
over HTTP, with their media type, Range requests and conditional requests. With no command it
serves (`serve`): ./media by default, created with a small sample on the first run.
"""

EPILOG = """\
Every setting is an environment variable PROXY_<NAME>: `%(prog)s settings` lists them all with
their current values and defaults. The options above override the environment.

examples:
  %(prog)s --port 9000 --root ./videos
  PROXY_BACKEND=s3 PROXY_S3_BUCKET=media %(prog)s --host 0.0.0.0 --workers 2
  %(prog)s sign video/clip.mp4 --ttl 3600
"""

# Options that override a setting: flag -> its variable. --root also means --backend local.
OPTION_VARIABLES = {
    "host": "PROXY_HOST",
    "port": "PROXY_PORT",
    "root": "PROXY_LOCAL_ROOT",
    "backend": "PROXY_BACKEND",
    "workers": "PROXY_WORKERS",
}


def _lean_log_records() -> None:
    """Skip what no formatter of this process prints (caller, thread, process names): a
    quarter of each access-log line's cost. Module level, so uvicorn's workers do it too."""
    logging._srcfile = None  # the logging HOWTO's "Optimization" switches
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


_lean_log_records()


def _stop(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _exit_cleanly_on(*signals: signal.Signals) -> None:
    """A stop by ``signals`` ends with status 0, as ECS, systemd and Kubernetes expect of a clean
    stop: uvicorn drains on them, then puts back the handlers it found and raises the signal
    again, which without a handler of ours ended the process by the signal (status -15). Before
    uvicorn takes over, the same handler stops the process at once, also with 0."""
    for signum in signals:
        signal.signal(signum, _stop)


def serve(settings: Settings, reload: bool = False) -> None:
    """Run uvicorn; on the local backend's default root, create the sample on first run (not
    with PROXY_MOUNTS, whose mounts name their own roots and buckets)."""
    root = settings.local_root
    mounted = settings.mounts is not None or settings.mounts_file is not None
    if settings.backend == "local" and not mounted and not root.exists():
        if root != DEFAULT_LOCAL_ROOT:
            print(f"PROXY_LOCAL_ROOT: {str(root)!r} does not exist", file=sys.stderr)
            raise SystemExit(USAGE_EXIT)
        keys = write_sample(root)
        print(f"created a sample in ./{root}/", flush=True)
        for key in keys:
            print(f"  http://{settings.host}:{settings.port}/objects/{key}", flush=True)
    made = _share_metrics_between_workers() if settings.workers > 1 and settings.metrics else None
    _exit_cleanly_on(signal.SIGTERM, signal.SIGINT)
    try:
        _run(settings, reload)
    finally:
        if made is not None:  # the directory this process made: nothing of it is left behind
            shutil.rmtree(made, ignore_errors=True)


def _run(settings: Settings, reload: bool) -> None:
    uvicorn.run(
        "proxy.app:create_app",
        factory=True,  # each worker builds its own app (and its own storage client)
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        **uvicorn_options(settings),
        timeout_graceful_shutdown=settings.shutdown_timeout,
        access_log=not settings.access_log,  # ours is one JSON line per request
        reload=reload,  # development: restart when a file of the package changes
        reload_dirs=[str(Path(__file__).parent)] if reload else None,
    )


def _share_metrics_between_workers() -> Path | None:
    """prometheus-client's multiprocess mode: each worker writes its samples to one directory.
    Returns the directory when this process made it (the caller removes it at exit)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        for stale in directory.glob("*.db"):  # from an earlier run: would be counted again
            stale.unlink()
        return None
    directory = Path(tempfile.mkdtemp(prefix="media-proxy-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def _port(value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer between 0 and 65535")
    return int(value)


def _workers(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer between 1 and 64")
    return int(value)


def _serve_options() -> argparse.ArgumentParser:
    """The options of `serve` (and `settings`, which shows their effect); SUPPRESS keeps an
    option given before the command from being reset by the subcommand's own parser."""
    options = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = options.add_argument_group("serving options (override PROXY_* variables)")
    group.add_argument("--host", help="listen address (PROXY_HOST; default 127.0.0.1)")
    group.add_argument("--port", type=_port, help="listen port (PROXY_PORT; default 8000)")
    group.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="serve this directory (PROXY_LOCAL_ROOT; implies --backend local)",
    )
    group.add_argument("--backend", choices=["local", "s3"], help="storage backend (PROXY_BACKEND)")
    group.add_argument(
        "--workers", type=_workers, metavar="N", help="worker processes (PROXY_WORKERS; default 1)"
    )
    group.add_argument(
        "--reload",
        action="store_true",
        help="development: restart when the proxy's code changes (one process)",
    )
    return options


def parser() -> argparse.ArgumentParser:
    """The whole command line: serving options, then an optional command."""
    serve_options = _serve_options()
    main_parser = argparse.ArgumentParser(
        prog="media-proxy" if Path(sys.argv[0]).name == "media-proxy" else "python -m proxy",
        description=DESCRIPTION,
        epilog=EPILOG,
        parents=[serve_options],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main_parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = main_parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    commands.add_parser("serve", parents=[serve_options], help="run the proxy (the default)")
    settings = commands.add_parser(
        "settings",
        parents=[serve_options],
        help="list every setting: variable, current value, default, accepted values",
    )
    settings.add_argument(
        "--markdown", action="store_true", help="print the README's configuration table instead"
    )
    sign = commands.add_parser(
        "sign", help="print a signed URL for one object, or a folder's listing (a key ending in /)"
    )
    sign.add_argument("key", help="the object key, e.g. video/clip.mp4, or a folder, e.g. video/")
    sign.add_argument("--ttl", type=int, default=3600, help="seconds the URL stays valid")
    sign.add_argument("--base-url", help="default: http://PROXY_HOST:PROXY_PORT")
    sign.add_argument(
        "--method",
        choices=SIGNABLE_METHODS,
        default="GET",
        help="the method the URL grants (default GET, which grants HEAD too; PUT and DELETE "
        "where writes are on: a browser can upload to a URL signed for PUT)",
    )
    sign.add_argument(
        "--download",
        nargs="?",
        const="",
        metavar="NAME",
        help="an object: sent as an attachment named NAME (default: the key's file name)",
    )
    listing = sign.add_argument_group(
        "a folder's listing (signed with the URL: a request may not add or change any)"
    )
    listing.add_argument("--format", choices=["jsonl", "json", "html"])
    listing.add_argument("--recursive", action="store_true", help="every key below, no folders")
    listing.add_argument("--limit", type=int, metavar="N", help="the most entries")
    listing.add_argument("--after", metavar="NAME", help="only names after this one")
    commands.add_parser(
        "hash-key", help="read an API token on stdin, print its PROXY_API_KEYS sha256"
    )
    return main_parser


def _apply_options(args: argparse.Namespace) -> None:
    """Options override the environment: written into it, so that every uvicorn worker
    (which builds its settings from the environment) sees them too."""
    given = vars(args)
    if "root" in given and "backend" not in given:
        os.environ["PROXY_BACKEND"] = "local"
    for option, variable in OPTION_VARIABLES.items():
        if option in given:
            os.environ[variable] = str(given[option])


SIGNABLE_METHODS = ["GET", "HEAD", "PUT", "DELETE"]  # PUT, DELETE: where PROXY_WRITES is on
LISTING_OPTIONS = ("format", "recursive", "limit", "after")


def sign_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The query parameters ``sign``'s options put on (and sign into) the URL; a one-line error
    and status 2 for an option the key's kind has not (a folder's listing, or an object)."""
    folder = args.key == "" or args.key.endswith("/")
    given = [name for name in LISTING_OPTIONS if getattr(args, name) not in (None, False)]
    params: list[tuple[str, str]] = []
    if folder and args.download is not None:
        _usage_error("--download: a folder's listing is not a download (give an object's key)")
    if not folder and given:
        _usage_error(f"--{given[0]}: listing options need a folder's key, ending in /")
    if args.method in ("PUT", "DELETE") and (folder or given or args.download is not None):
        _usage_error(f"--method {args.method}: an object's key only, without other options")
    if args.download is not None:
        params.append(("download", args.download))
    if args.limit is not None and args.limit < 1:
        _usage_error(f"--limit: {args.limit} is not a positive whole number")
    for name in given:
        value = getattr(args, name)
        params.append((name, "true" if value is True else str(value)))
    return params


def _usage_error(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(USAGE_EXIT)


def sign(
    settings: Settings,
    key: str,
    ttl: int,
    base_url: str | None,
    method: str = "GET",
    params: Sequence[tuple[str, str]] = (),
) -> None:
    """Print a signed URL on stdout and when it expires on stderr; a TTL the proxy would refuse
    (not positive, or past PROXY_MAX_SIGNED_TTL) is a one-line error and status 2: the link could
    never work. The URL grants ``method`` with ``params`` and no other parameter."""
    if not 0 < ttl <= settings.max_signed_ttl:
        _usage_error(
            f"--ttl: {ttl} is not between 1 and PROXY_MAX_SIGNED_TTL ({settings.max_signed_ttl})"
        )
    base_url = base_url or f"http://{settings.host}:{settings.port}"
    try:
        url = signed_url(settings, base_url, key, ttl, method=method, params=params)
    except ValueError as exc:
        sys.exit(str(exc))
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    print(url)
    when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"expires {when} (in {ttl} s)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "hash-key":  # needs no settings: an unrelated bad one must not stop it
        print(hash_token(sys.stdin.readline().strip()))
        return
    _apply_options(args)
    if args.command == "settings" and args.markdown:
        print(markdown_table(), end="")
        return
    settings = settings_or_exit()
    if args.command == "settings":
        print(listing(settings), end="")
    elif args.command == "sign":
        sign(settings, args.key, args.ttl, args.base_url, args.method, sign_params(args))
    else:
        reload = bool(getattr(args, "reload", False))
        if reload and settings.workers > 1:
            print("--reload runs one process: drop --workers / PROXY_WORKERS", file=sys.stderr)
            raise SystemExit(USAGE_EXIT)
        serve(settings, reload)


if __name__ == "__main__":
    main()
