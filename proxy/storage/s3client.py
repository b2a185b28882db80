"""The S3 backends' botocore clients, one per worker process, built from ``S3Options``: one
Config for both flavours, and sessions tuned to parse less and keep less of botocore's data.
Each flavour imports its own library when it is built (the other's costs ~16 MB of RSS).

The boto3 client keeps to the deadline of the exchange it runs in (``connections.deadline``),
through two botocore events: before each attempt is sent, its read timeout is cut to the time left
(botocore reads a per-request ``read_timeout`` from the request's context) or, none left, the
attempt fails; after a failed attempt, a retry that botocore's backoff could start past the
deadline is not made: the attempt's outcome is the call's. Its calls block a thread, which nothing
can interrupt from outside. The aiobotocore flavour's calls are cancelled at the deadline instead
(``asyncio.timeout``, in ``proxy.storage.s3``): its reads keep their own timeout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

from proxy.metrics import BACKEND_CALLS
from proxy.storage.connections import time_left
from proxy.storage.options import S3Options
from proxy.storage.presigned import USER_AGENT

__all__ = ["ENDPOINT_SERVICES", "aiobotocore_client", "boto3_client", "config_options"]


def config_options(options: S3Options) -> dict[str, Any]:
    """botocore Config options, shared by both clients."""
    return {
        "max_pool_connections": options.pool_size,
        "connect_timeout": options.connect_timeout,
        "read_timeout": options.read_timeout,
        "retries": {"total_max_attempts": options.max_attempts, "mode": "standard"},
        "s3": {"addressing_style": options.addressing_style},
        # boto3 >= 1.36 checksums by default, which several S3-compatible stores reject, and a
        # streaming proxy cannot validate a whole-object checksum before sending anyway.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        # A fixed User-Agent: botocore otherwise assembles its own twice per request (a tenth
        # of a ranged GET's client time).
        "user_agent": USER_AGENT,
        # SigV4 everywhere: botocore would presign with the deprecated SigV2 for custom endpoints.
        "signature_version": "s3v4",
    }


def boto3_client(options: S3Options) -> tuple[Any, botocore.session.Session]:
    """The boto3 flavour's client (thread-safe) and its botocore session."""
    import boto3.session

    botocore_session = _tune(botocore.session.Session())
    session = boto3.session.Session(profile_name=options.profile, botocore_session=botocore_session)
    client = session.client(
        "s3",
        region_name=options.region,
        endpoint_url=options.endpoint_url,
        config=Config(**config_options(options)),
    )
    client.meta.events.register("after-call.s3", _count_call)
    _keep_to_deadlines(client, options)
    return client, botocore_session


async def aiobotocore_client(
    options: S3Options, stack: AsyncExitStack
) -> tuple[Any, botocore.session.Session]:
    """The aiobotocore flavour's client, entered into ``stack``, and its session."""
    import aiobotocore.session
    from aiobotocore.config import AioConfig

    session = _tune(aiobotocore.session.AioSession(profile=options.profile))
    client = await stack.enter_async_context(
        session.create_client(
            "s3",
            region_name=options.region,
            endpoint_url=options.endpoint_url,
            config=AioConfig(**config_options(options)),
        )
    )
    client.meta.events.register("after-call.s3", _count_call)
    return client, session


def _count_call(model: Any, **_: Any) -> None:
    BACKEND_CALLS.labels("s3", model.name).inc()


class DeadlinePassed(TimeoutError):
    """An attempt that would start after its exchange's deadline (a 504, never retried: botocore
    retries only its own exception types)."""


def _keep_to_deadlines(client: Any, options: S3Options) -> None:
    """Register the boto3 client's hooks that keep each call within its exchange's deadline."""
    read_timeout, max_attempts = options.read_timeout, options.max_attempts

    def bound_attempt(request: Any, **_: Any) -> None:
        left = time_left()
        if left is None:
            return
        if left <= 0:
            raise DeadlinePassed("the S3 exchange's deadline has passed")
        request.context["read_timeout"] = min(read_timeout, left)

    def retry_in_time(
        attempts: int,
        response: tuple[Any, Mapping[str, Any]] | None,
        caught_exception: Exception | None,
        operation: Any,
        **_: Any,
    ) -> None:
        left = time_left()
        if left is None or attempts >= max_attempts:
            return  # botocore decides
        if caught_exception is None and (response is None or response[0].status_code < 400):
            return  # an answer: nothing to retry
        if left >= retry_backoff_bound(attempts):
            return  # a retry would start in time: botocore decides
        if caught_exception is not None:
            raise caught_exception
        assert response is not None
        raise ClientError(dict(response[1]), operation.name)

    events = client.meta.events
    events.register("before-send.s3", bound_attempt, unique_id="proxy-deadline-send")
    events.register_first("needs-retry.s3", retry_in_time, unique_id="proxy-deadline-retry")


def retry_backoff_bound(attempts: int) -> float:
    """The longest botocore's standard mode sleeps before the retry that follows attempt
    ``attempts`` (its truncated binary exponential backoff: rand(0, 1) * min(2 ** (n - 1), 20))."""
    return float(min(2 ** (attempts - 1), 20))


# The services whose clients a session of the proxy creates: S3, and those of the credential
# chain (assumed roles and web identity: STS; SSO profiles: SSO and SSO-OIDC; `aws login`: signin).
ENDPOINT_SERVICES = frozenset({"s3", "sts", "sso", "sso-oidc", "signin"})


class _FileLoader(botocore.loaders.JSONFileLoader):  # type: ignore[misc]  # untyped
    """botocore's JSON files, but only ``ENDPOINT_SERVICES`` of its legacy endpoint table.

    A session keeps endpoints.json (every service of every partition: ~7 MB of dicts) for as
    long as it lives, to compute each client's default endpoint when the client is created;
    requests are routed by each service's endpoint rule set. Measured on SeaweedFS (fresh
    processes, two downloads and 5 s of ranges, then 50 slow readers): a fresh process 4 MB
    smaller, and 5 MB less at the peak (the heap it freed is reused).
    """

    def _load_file(self, full_path: str, open_method: Any) -> Any:
        if not os.path.basename(full_path).startswith("service-2.") or not os.path.isfile(
            full_path
        ):
            return super()._load_file(full_path, open_method)
        with open_method(full_path, "rb") as file:
            return json.loads(file.read().decode("utf-8"), object_pairs_hook=_model_object)

    def load_file(self, file_path: str) -> Any:
        data = super().load_file(file_path)
        if data is None or os.path.basename(file_path) != "endpoints":
            return data
        partitions = [
            {**partition, "services": _served(partition.get("services", {}))}
            for partition in data.get("partitions", [])
        ]
        return {**data, "partitions": partitions}


def _model_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A service model's JSON object, its documentation string empty (docstrings show them;
    botocore reads some of the keys, so they stay), in a plain dict (same order): S3's model,
    held for the client's life, is 3.4 MB of OrderedDicts as botocore loads it, 0.75 MB so."""
    return {
        name: "" if name == "documentation" and isinstance(value, str) else value
        for name, value in pairs
    }


def _served(services: Mapping[str, Any]) -> dict[str, Any]:
    return {name: entry for name, entry in services.items() if name in ENDPOINT_SERVICES}


def _tune(session: botocore.session.Session) -> botocore.session.Session:
    """Leave timestamps as the header's text: botocore parses each with dateutil, which took a
    tenth of a ranged GET's client time; ``proxy.storage.s3answer`` reads the HTTP-date itself.
    Load botocore's data (from botocore's own search path, AWS_DATA_PATH) with ``_FileLoader``."""
    factory = session.get_component("response_parser_factory")
    factory.set_parser_defaults(timestamp_parser=str)
    loader = botocore.loaders.create_loader(session.get_config_variable("data_path"))
    loader.file_loader = _FileLoader()
    session.register_component("data_loader", loader)
    return session
