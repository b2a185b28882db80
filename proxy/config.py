"""Settings from the environment (prefix ``PROXY_``), built in ``create_app``, never at import."""

from __future__ import annotations

import difflib
import json
import re
import tempfile
import tomllib
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from proxy.storage.options import (
    DEFAULT_OPEN_FILES,
    CacheOptions,
    LocalOptions,
    S3Options,
    StorageOptions,
)

# Measured with benchmarks/chunk_size.py and benchmarks/run.py: see docs/design.md, "The pacer".
DEFAULT_CHUNK_SIZE = 1024 * 1024  # the largest read, for clients that keep up
DEFAULT_MIN_CHUNK_SIZE = 64 * 1024  # the first read, and slow clients' reads
DEFAULT_LOCAL_ROOT = Path("media")


class ApiKey(BaseModel):
    """A bearer key for internal services, stored as the SHA-256 of the token (hex)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    prefix: str = ""  # the key may only read objects whose key starts with this
    # With PROXY_MOUNTS: the mounts the key may read (None: every mount); its prefix applies
    # to the keys within each of them.
    mounts: list[str] | None = None
    # "write": the key may also PUT and DELETE (where PROXY_WRITES is on); read-only otherwise.
    access: Literal["read", "write"] = "read"


# A mount's name: one or more path segments of these characters (``videos``, ``media/2024``).
MOUNT_SEGMENT = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9_.~-]*")
# The settings a mount may set for itself; what it does not set it takes from the PROXY_
# variable of the same name, except these, which each mount names for itself.
MOUNT_OWN = ("backend", "local_root", "s3_bucket", "s3_prefix", "cache_dir")
MOUNT_SETTINGS = (
    *MOUNT_OWN,
    "flavor",
    "local_open_files",
    "s3_client",
    "s3_endpoint_url",
    "s3_region",
    "s3_profile",
    "s3_addressing_style",
    "s3_pool_size",
    "s3_connect_timeout",
    "s3_read_timeout",
    "s3_deadline",
    "s3_resume_attempts",
    "s3_max_attempts",
    "s3_presigned_gets",
    "cache_max_size",
    "cache_slice_size",
    "cache_validity",
    "cors_allow_origins",
    "cache_control",
    "inline_active_content",
    "listing",
    "writes",
    "writes_keep_headers",
    "max_upload_size",
    "multipart_threshold",
    "multipart_part_size",
)
# public: no credentials needed; auth: which credentials a mount takes ("any": bearer keys and
# signed URLs, "keys", "signed"); mode: "proxy" or "redirect" (S3 only).
MOUNT_ONLY = ("public", "auth", "mode")
MOUNT_AUTH = ("any", "keys", "signed")
MOUNT_OPTIONS = (*MOUNT_SETTINGS, *MOUNT_ONLY)


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount: its name ("" for the single backend of the PROXY_ variables, served at the
    root), the settings it is served with (the global ones with its own options), whether it
    needs no credentials, and whether a GET is redirected to a presigned S3 URL."""

    name: str
    settings: Settings
    public: bool = False
    redirect: bool = False
    auth: str = "any"  # the credentials it takes: "any", "keys" (bearer) or "signed" (URLs)

    @property
    def path(self) -> str:
        """What its keys start with below ``/objects/``: ``videos/``, or "" at the root."""
        return f"{self.name}/" if self.name else ""


# True while a mount's own options are validated alone (``_mount``).
_MOUNT_ALONE: ContextVar[bool] = ContextVar("mount_alone", default=False)


class Settings(BaseSettings):
    """Every knob of the proxy; each field is read from ``PROXY_<NAME>``.

    Each field's description is its line in the README's configuration table and in
    ``python -m proxy settings`` (``proxy/settingsdoc.py`` renders both); ``shown`` in
    ``json_schema_extra`` is how its default reads there, ``form`` what it accepts.
    """

    model_config = SettingsConfigDict(env_prefix="PROXY_", extra="ignore")
    _mount_list: list[Mount] | None = PrivateAttr(default=None)

    backend: Literal["local", "s3"] = Field(
        default="local", description="storage backend: `local` or `s3`"
    )
    flavor: Literal["sync", "async"] = Field(
        default="async",
        description="local backend: `async` (`async def` endpoints; open and page-cache reads on "
        "the event loop, reads that would wait for the disk in worker threads) or `sync` (`def` "
        "endpoints in FastAPI's threadpool; while streaming, page-cache reads on the event loop "
        "too, the others in worker threads)",
    )
    local_root: Path = Field(
        default=DEFAULT_LOCAL_ROOT,
        description="directory served by the local backend; the default is created with a "
        "sample on first run",
        json_schema_extra={"form": "a directory"},
    )
    local_open_files: int = Field(
        default=DEFAULT_OPEN_FILES,
        ge=0,
        le=4096,
        description="descriptors of recently served files kept open, like nginx's "
        "`open_file_cache`, but each use first checks with one `stat` that the path still names "
        "that very file (device, inode, size, mtime, ctime); closed after 10 s unused; `0` opens "
        "every request afresh (advisable on NFS, where `stat` may answer from the attribute "
        "cache)",
    )

    # S3: credentials come only from the standard AWS chain (env, profile, container/instance role).
    s3_client: Literal["aiobotocore", "boto3"] = Field(
        default="aiobotocore",
        description="`aiobotocore` (`async def` endpoints) or `boto3` (`def` endpoints)",
    )
    s3_bucket: str = Field(
        default="",
        description="the bucket; required with `PROXY_BACKEND=s3`",
        json_schema_extra={"shown": "—"},
    )
    s3_prefix: str = Field(
        default="",
        description="key prefix inside the bucket (`videos` serves `videos/{key}`)",
        json_schema_extra={"shown": "empty"},
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="endpoint of an S3-compatible store",
        json_schema_extra={"shown": "AWS", "form": "a URL"},
    )
    s3_region: str | None = Field(
        default=None, description="region", json_schema_extra={"shown": "from the AWS chain"}
    )
    s3_profile: str | None = Field(
        default=None,
        description="shared-config profile to take credentials from",
        json_schema_extra={"shown": "from the AWS chain"},
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="`auto`, `path` or `virtual`"
    )
    s3_pool_size: int = Field(
        default=128,
        ge=1,
        le=4096,
        description="idle S3 connections kept per worker process (a download holds one while "
        "it streams)",
    )
    s3_connect_timeout: float = Field(default=5.0, gt=0, description="seconds")
    s3_read_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds without a byte from S3 before 504 (or an abort mid-stream)",
    )
    s3_deadline: float | None = Field(
        default=None,
        gt=0,
        description="seconds one S3 exchange may take before its response starts, the presigned "
        "try and every retry included (then 504)",
        json_schema_extra={"shown": "2 × `PROXY_S3_READ_TIMEOUT`", "form": "seconds"},
    )
    s3_resume_attempts: int = Field(
        default=2,
        ge=0,
        le=20,
        description="times a response may re-request the rest of an S3 body that ended early "
        "(reset, close, read timeout), with `If-Match` its ETag; `0`: cut it",
    )
    s3_max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="attempts per S3 call through botocore, the first included (standard "
        "retries); a failed presigned GetObject is then asked through botocore",
    )
    # GetObject as a presigned GET (a fifth of botocore's CPU per call); botocore still answers
    # what that cannot (errors it must retry, expired credentials) and every other call.
    s3_presigned_gets: bool = Field(
        default=True,
        description="GetObject as a cached presigned URL and one plain GET; `false`: every call "
        "through botocore",
    )
    # The slice cache in front of S3 (off unless a directory is set); sizes accept "10GiB".
    cache_dir: Path | None = Field(
        default=None,
        description="a directory for the slice cache in front of S3; unset: no cache",
        json_schema_extra={"form": "a directory"},
    )
    cache_max_size: ByteSize = Field(
        default=ByteSize(10 * 1024**3),
        ge=16 * 1024 * 1024,
        description="the most bytes the cache directory holds (`20GiB`, `500MB`, bytes; at "
        "least 16 MiB)",
        json_schema_extra={
            "shown": "`10GiB`",
            "form": "a size such as 20GiB, 500MB or a number of bytes, at least 16MiB",
        },
    )
    cache_slice_size: ByteSize = Field(
        default=ByteSize(1024 * 1024),
        ge=64 * 1024,
        le=64 * 1024 * 1024,
        description="slice size and alignment (64 KiB – 64 MiB)",
        json_schema_extra={"shown": "`1MiB`", "form": "a size between 64KiB and 64MiB"},
    )
    cache_validity: float = Field(
        default=60.0,
        ge=0,
        description="seconds cached metadata is used before it is revalidated with S3",
    )
    readiness_cache_seconds: float = Field(
        default=5.0, ge=0, description="how long a `/readyz` answer is reused"
    )
    # Origins whose pages may use the objects (players on other sites): none by default.
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="origins whose pages may fetch objects, comma-separated or a JSON list "
        "(`https://player.example`)",
        json_schema_extra={"shown": "none", "form": "origins, comma-separated or a JSON list"},
    )
    cors_max_age: int = Field(
        default=600, ge=0, description="seconds a browser may cache a preflight answer"
    )

    chunk_size: int = Field(
        default=DEFAULT_CHUNK_SIZE,
        ge=1024,
        le=16 * 1024 * 1024,
        description="the largest read and send (1 KiB – 16 MiB), for clients that keep up; "
        "bodies up to this size are read in one go",
    )
    min_chunk_size: int = Field(
        default=DEFAULT_MIN_CHUNK_SIZE,
        ge=1024,
        le=16 * 1024 * 1024,
        description="the first read of a stream, and the size slow clients get (bounds memory "
        "per slow stream)",
    )
    cache_control: str = Field(
        default="no-cache",
        description="`Cache-Control` on 200/206/304; empty to send none",
        json_schema_extra={"form": "a header value in visible ASCII"},
    )
    max_ranges: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="more ranges than this in one `Range` header: the whole object is sent",
    )
    threadpool_size: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="worker threads for `def` endpoints and blocking reads",
    )

    listing: bool = Field(
        default=False,
        description="list a prefix at `/objects/{prefix}/` (and `/objects/`): JSON Lines, a "
        "JSON array or an HTML browse page, streamed; off: such a path is `404`",
    )
    # Mounts (issue 24): several backends, each under /objects/{mount}/ with its own policy.
    mounts: dict[str, Any] | None = Field(
        default=None,
        description='several backends, a JSON object `{"mount": {options}}`, each served at '
        "`/objects/{mount}/`; options are the settings' names without `PROXY_`, lowercased "
        "(`backend`, `s3_bucket`, `local_root`, `cache_control`, ...), plus `public`, `auth` "
        "(`any`, `keys` or `signed`) and `mode` (`proxy` or `redirect`); unset: the "
        "`PROXY_BACKEND` settings at `/objects/`",
        json_schema_extra={
            "shown": "none",
            "form": 'a JSON object {"name": {"backend": "s3", "s3_bucket": ...}, ...}',
        },
    )
    mounts_file: Path | None = Field(
        default=None,
        description="a JSON, TOML or YAML file holding what `PROXY_MOUNTS` would",
        json_schema_extra={"form": "a .json, .toml, .yaml or .yml file"},
    )
    redirect_ttl: int = Field(
        default=300,
        ge=1,
        le=7 * 24 * 3600,
        description="seconds the presigned S3 URL a redirecting mount (`mode: redirect`) "
        "answers a GET with stays valid",
    )

    # Writes (issue 25): PUT and DELETE, off unless enabled, always with credentials.
    writes: bool = Field(
        default=False,
        description="accept `PUT` and `DELETE` of `/objects/{key}` from bearer keys with "
        '`"access": "write"` and URLs signed for the method; off: `405`',
    )
    writes_keep_headers: Annotated[
        list[Literal["content-disposition", "cache-control"]], NoDecode
    ] = Field(
        default=[],
        description="request header fields a `PUT` stores with the object "
        "(`content-disposition`, `cache-control`), comma-separated",
        json_schema_extra={"shown": "none", "form": "content-disposition, cache-control"},
    )
    max_upload_size: ByteSize = Field(
        default=ByteSize(5 * 1024**3),
        ge=0,
        le=5 * 1024**4,
        description="the largest body a `PUT` stores (`413` past it)",
        json_schema_extra={"shown": "`5GiB`", "form": "a size such as 5GiB, 500MB or bytes"},
    )
    multipart_threshold: ByteSize = Field(
        default=ByteSize(16 * 1024**2),
        ge=5 * 1024**2,
        le=5 * 1024**3,
        description="S3: a body up to this size is stored with one PutObject, a longer one as a "
        "multipart upload",
        json_schema_extra={"shown": "`16MiB`", "form": "a size between 5MiB and 5GiB"},
    )
    multipart_part_size: ByteSize = Field(
        default=ByteSize(16 * 1024**2),
        ge=5 * 1024**2,
        le=5 * 1024**3,
        description="S3: the part size of a multipart upload (two at most per upload, spooled "
        "to a temporary file, not held in memory)",
        json_schema_extra={"shown": "`16MiB`", "form": "a size between 5MiB and 5GiB"},
    )
    upload_spool_dir: Path | None = Field(
        default=None,
        description="S3: the directory multipart upload parts are spooled to (unnamed files); "
        "unset: the system's temporary directory (`TMPDIR`)",
        json_schema_extra={"form": "an existing directory this process can write to"},
    )

    # Access control: on as soon as any API key or signing key is configured.
    api_keys: list[ApiKey] = Field(
        default=[],
        description='bearer keys, a JSON list of `{"name", "sha256", "prefix"}` (and '
        '`"mounts"`: the only mounts the key reads)',
        json_schema_extra={
            "shown": "none",
            "form": 'a JSON list of {"name": ..., "sha256": <64 hex digits>, "prefix": ...}',
        },
    )
    signing_keys: dict[str, SecretStr] = Field(
        default={},
        description='signed-URL secrets, a JSON object `{"key id": "secret"}`',
        json_schema_extra={
            "shown": "none",
            "form": 'a JSON object {"key id": "secret"}',
            "secret": True,
        },
    )
    signing_key_id: str | None = Field(
        default=None,
        description="the key id `python -m proxy sign` uses",
        json_schema_extra={"shown": "the last"},
    )
    max_signed_ttl: int = Field(
        default=7 * 24 * 3600,
        ge=1,
        description="the latest a signed link may expire, in seconds from now",
    )

    # Operations.
    access_log: bool = Field(default=True, description="one JSON line per request on stdout")
    metrics: bool = Field(default=True, description="serve `/metrics` and count")
    max_request_head: ByteSize = Field(
        default=ByteSize(64 * 1024),
        ge=1024,
        le=16 * 1024 * 1024,
        description="the longest request line plus header fields; longer: `431` (`414` for the "
        "request line) and the connection closes",
        json_schema_extra={"shown": "`64KiB`", "form": "a size between 1KiB and 16MiB"},
    )
    header_timeout: float = Field(
        default=15.0,
        gt=0,
        description="seconds a client may take to send a request head, from the connection's "
        "start or the end of the previous response; then `408` and the connection closes",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="open client connections per worker process; beyond it new ones get `503` "
        "and close",
    )
    shutdown_timeout: int = Field(
        default=30,
        ge=0,
        description="seconds running downloads may take to finish after SIGTERM",
    )
    # Stored HTML, SVG and XML are sent as attachments in a CSP sandbox unless this is true.
    inline_active_content: bool = Field(
        default=False,
        description="render stored HTML/SVG/XML inline (only on an origin of its own)",
    )
    host: str = Field(default="127.0.0.1", description="listen address")
    port: int = Field(default=8000, ge=0, le=65535, description="listen port")
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        default="info", description="uvicorn log level"
    )
    loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto",
        description="uvicorn event loop: `auto` (uvloop when installed), `asyncio`, `uvloop`",
    )
    http: Literal["auto", "h11", "httptools"] = Field(
        default="auto",
        description="uvicorn HTTP parser: `auto` (httptools when installed), `h11`, `httptools`",
    )
    zero_copy: bool = Field(
        default=True,
        description="send local files' and cached slices' bytes by sendfile, not through Python "
        "(the ASGI zero-copy send; not over TLS)",
    )

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: object) -> object:
        # PROXY_CORS_ALLOW_ORIGINS="https://a.example, https://b.example" or a JSON list.
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("writes_keep_headers", mode="before")
    @classmethod
    def _header_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [name.strip().lower() for name in value.split(",") if name.strip()]
        return value

    @field_validator("upload_spool_dir")
    @classmethod
    def _writable_directory(cls, value: Path | None) -> Path | None:
        # Checked by making a file there, as a spooled part will: a missing, read-only or
        # forbidden directory is refused at start, not at the first multipart upload.
        if value is not None:
            try:
                tempfile.TemporaryFile(dir=value).close()
            except OSError:
                raise ValueError("not a writable directory") from None
        return value

    @field_validator("cache_control")
    @classmethod
    def _visible_ascii(cls, value: str) -> str:
        # A header value from the environment must not smuggle CR/LF into responses.
        if not re.fullmatch(r"[\x20-\x7e]*", value):
            raise ValueError("must be visible ASCII")
        return value.strip()

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError("PROXY_S3_BUCKET: required with PROXY_BACKEND=s3")
        if self.cache_dir is not None and self.backend != "s3":
            raise ValueError(
                "PROXY_CACHE_DIR: the cache is for S3 objects; it needs PROXY_BACKEND=s3"
            )
        if self.cache_slice_size * 2 > self.cache_max_size:
            raise ValueError(
                "PROXY_CACHE_MAX_SIZE: must hold at least two slices (PROXY_CACHE_SLICE_SIZE)"
            )
        return self

    @model_validator(mode="after")
    def _mounts_are_sound(self) -> Settings:
        problems: list[str] = []
        self._mount_list = parse_mounts(self, problems)
        for api_key in self.api_keys:
            names = {mount.name for mount in self._mount_list or ()}
            for name in api_key.mounts or ():
                if name not in names:
                    problems.append(
                        f"PROXY_API_KEYS: key {api_key.name!r}: mounts: {name!r} names no mount"
                    )
        writing = [mount.name for mount in self.mount_list() if mount.settings.writes]
        # A mount's options alone hold no keys: the proxy's are checked once it is whole.
        if writing and not self.auth_enabled and not _MOUNT_ALONE.get():
            where = "PROXY_WRITES" if writing == [""] else f"mounts {', '.join(writing)}: writes"
            problems.append(
                f"{where}: writes always need credentials: set PROXY_API_KEYS (a key with "
                '"access": "write") or PROXY_SIGNING_KEYS'
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def mount_list(self) -> list[Mount]:
        """The mounts served: those of PROXY_MOUNTS (or PROXY_MOUNTS_FILE), else one at the
        root with these settings."""
        return self._mount_list or [Mount("", self)]

    @property
    def auth_enabled(self) -> bool:
        """Whether object requests need a bearer key or a signed URL."""
        return bool(self.api_keys or self.signing_keys)

    @property
    def sync(self) -> bool:
        """Whether the blocking flavour serves requests (``def`` endpoints, threadpool)."""
        return self.storage_options().sync

    def storage_options(self) -> StorageOptions:
        """The backend's own options, taken from these settings (storage never reads them)."""
        if self.backend == "s3":
            return self.s3_options()
        return LocalOptions(self.local_root, self.local_open_files, sync=self.flavor == "sync")

    def s3_options(self) -> S3Options:
        """The ``PROXY_S3_*`` settings as the S3 backend's options."""
        return S3Options(
            bucket=self.s3_bucket,
            prefix=self.s3_prefix,
            client=self.s3_client,
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            profile=self.s3_profile,
            addressing_style=self.s3_addressing_style,
            pool_size=self.s3_pool_size,
            connect_timeout=self.s3_connect_timeout,
            read_timeout=self.s3_read_timeout,
            max_attempts=self.s3_max_attempts,
            deadline=self.s3_deadline or 2 * self.s3_read_timeout,
            resume_attempts=self.s3_resume_attempts,
            presigned_gets=self.s3_presigned_gets,
            cache=self.cache_options(),
            multipart_threshold=int(self.multipart_threshold),
            multipart_part_size=int(self.multipart_part_size),
            spool_dir=self.upload_spool_dir,
        )

    def cache_options(self) -> CacheOptions | None:
        """The ``PROXY_CACHE_*`` settings, or None when the cache is off."""
        if self.cache_dir is None:
            return None
        return CacheOptions(
            directory=self.cache_dir,
            max_size=int(self.cache_max_size),
            slice_size=int(self.cache_slice_size),
            validity=self.cache_validity,
        )


def read_mounts_file(path: Path) -> object:
    """A mounts file's content: JSON, TOML or YAML by its suffix (``ValueError`` if unreadable)."""
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml", ".yaml", ".yml"):
        raise ValueError("the file name must end in .json, .toml, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot be read ({exc.__class__.__name__})") from None
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        import yaml  # pyyaml: loaded only for a YAML mounts file

        return yaml.safe_load(text)
    except ValueError as exc:
        raise ValueError(f"not valid {suffix[1:].upper()} ({exc})") from None
    except Exception as exc:  # yaml.YAMLError and its kin
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"not valid YAML ({first})") from None


def _name_problem(name: str) -> str | None:
    if not name:
        return "the name is empty"
    segments = name.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "the name has a leading or trailing '/', an empty, '.' or '..' segment"
    if not all(MOUNT_SEGMENT.fullmatch(segment) for segment in segments):
        return "the name may hold letters, digits, '_', '-', '.', '~' and '/' between segments"
    return None


def _unknown_option(option: str) -> str:
    close = difflib.get_close_matches(option, MOUNT_OPTIONS, 1, 0.75)
    return f"did you mean {close[0]}?" if close else "not a mount option"


def _settings_problems(error: ValidationError) -> list[str]:
    """Pydantic's errors on a mount's options as ``field: message``."""
    lines = []
    for problem in error.errors():
        message = problem["msg"].removeprefix("Value error, ")
        if problem["loc"]:
            where = ".".join(str(part) for part in problem["loc"])
            lines.append(f"{where}: {message}")
        else:  # a model validator's message names variables: name the options instead
            lines.append(re.sub(r"PROXY_([A-Z0-9_]+)", lambda m: m.group(1).lower(), message))
    return lines


def parse_mounts(settings: Settings, problems: list[str]) -> list[Mount] | None:
    """The mounts of ``settings`` (None without PROXY_MOUNTS and PROXY_MOUNTS_FILE), every
    problem appended to ``problems`` as one line naming the mount and the option."""
    source = "PROXY_MOUNTS"
    raw: object = settings.mounts
    if settings.mounts_file is not None:
        if settings.mounts is not None:
            problems.append("PROXY_MOUNTS_FILE: set PROXY_MOUNTS or PROXY_MOUNTS_FILE, not both")
            return None
        source = "PROXY_MOUNTS_FILE"
        try:
            raw = read_mounts_file(settings.mounts_file)
        except ValueError as exc:
            problems.append(f"{source}: {settings.mounts_file}: {exc}")
            return None
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{source}: expected an object of mounts, at least one")
        return None
    mounts = []
    for name, options in raw.items():
        where = f"{source}: mount {name!r}"
        if (naming := _name_problem(str(name))) is not None:
            problems.append(f"{where}: {naming}")
            continue
        if not isinstance(options, dict):
            problems.append(f"{where}: its options must be an object")
            continue
        mount = _mount(settings, str(name), options, [], where)
        if isinstance(mount, Mount):
            mounts.append(mount)
        else:
            problems.extend(f"{where}: {line}" for line in mount)
    caches: dict[Path, str] = {}
    for mount in mounts:
        directory = mount.settings.cache_dir
        if directory is None:
            continue
        if (other := caches.setdefault(directory.resolve(), mount.name)) != mount.name:
            problems.append(
                f"{source}: mount {mount.name!r}: cache_dir: mount {other!r} has it already; "
                "each mount needs a cache directory of its own"
            )
    names = sorted(str(name) for name in raw)
    for outer in names:
        for inner in names:
            if inner.startswith(outer + "/"):
                problems.append(
                    f"{source}: mounts {outer!r} and {inner!r} nest: {inner!r} lies inside "
                    f"{outer!r}"
                )
    return mounts


def _mount(
    settings: Settings, name: str, options: dict[str, Any], lines: list[str], where: str
) -> Mount | list[str]:
    """One mount, or its problems (each ``option: what is wrong``)."""
    for option in sorted(set(options) - set(MOUNT_OPTIONS)):
        lines.append(f"{option}: unknown option; {_unknown_option(option)}")
    if "backend" not in options:
        lines.append("backend: required (`local` or `s3`)")
    public, mode = options.get("public", False), options.get("mode", "proxy")
    if not isinstance(public, bool):
        lines.append(f"public: {public!r} is not true or false")
    if mode not in ("proxy", "redirect"):
        lines.append(f"mode: {mode!r} is not one of proxy, redirect")
    auth = options.get("auth", "any")
    if auth not in MOUNT_AUTH:
        lines.append(f"auth: {auth!r} is not one of {', '.join(MOUNT_AUTH)}")
    own = {key: value for key, value in options.items() if key in MOUNT_SETTINGS}
    try:
        # From these options alone: an environment prefix no variable can have (a NUL).
        token = _MOUNT_ALONE.set(True)
        try:
            chosen = Settings(_env_prefix="\0", **own)  # type: ignore[call-arg]
        finally:
            _MOUNT_ALONE.reset(token)
    except ValidationError as exc:
        return lines + _settings_problems(exc)
    if lines:
        return lines
    if mode == "redirect" and chosen.backend != "s3":
        return ["mode: redirect needs backend s3 (it presigns S3 URLs)"]
    if chosen.backend == "local" and not chosen.local_root.is_dir():
        return [f"local_root: {str(chosen.local_root)!r} is not a directory"]
    update = {key: getattr(chosen, key) for key in (*MOUNT_OWN, *own)}
    mounted = settings.model_copy(update={**update, "mounts": None, "mounts_file": None})
    mounted._mount_list = None
    return Mount(name, mounted, public, mode == "redirect", auth)
