"""The storage factory: options in, a backend of the right flavour out, its lifecycle owned."""

from __future__ import annotations

import shutil
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from proxy.config import Settings
from proxy.storage.base import AsyncStorage, Storage
from proxy.storage.errors import ObjectNotFound
from proxy.storage.factory import open_backend
from proxy.storage.local import AsyncLocalStorage, LocalStorage
from proxy.storage.options import LocalOptions, S3Options
from tests.storage.test_contract import AsyncCounted, Counted

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("sync", "kind"), [(True, LocalStorage), (False, AsyncLocalStorage)])
async def test_local_backend_by_flavour(tmp_path: Path, sync: bool, kind: type) -> None:
    (tmp_path / "a.txt").write_bytes(b"abc")
    async with AsyncExitStack() as stack:
        backend = await open_backend(LocalOptions(tmp_path, sync=sync), stack, readiness_ttl=0)
        assert isinstance(backend.storage, kind)
        assert backend.sync is sync
        assert await backend.ready() is None
        shutil.rmtree(tmp_path)
        assert isinstance(await backend.ready(), ObjectNotFound)  # probed again: ttl 0


async def test_readiness_is_cached_for_its_ttl(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    async with AsyncExitStack() as stack:
        backend = await open_backend(LocalOptions(root), stack, readiness_ttl=3600)
        assert await backend.ready() is None
        shutil.rmtree(root)
        assert await backend.ready() is None  # the cached answer, no probe


async def test_the_stack_releases_what_the_factory_opened(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"abc")
    async with AsyncExitStack() as stack:
        backend = await open_backend(LocalOptions(tmp_path, open_files=4), stack)
        storage = backend.storage
        assert isinstance(storage, AsyncLocalStorage)
        reply = await storage.open("a.txt")
        await reply.body.aclose()
        assert len(storage.open_files) == 1  # a descriptor kept for the next request
    assert len(storage.open_files) == 0  # closed with the lifespan


@pytest.mark.parametrize("sync", [True, False])
async def test_a_layer_wraps_a_backend_and_keeps_its_flavour(tmp_path: Path, sync: bool) -> None:
    (tmp_path / "a.txt").write_bytes(b"abc")
    async with AsyncExitStack() as stack:
        backend = await open_backend(LocalOptions(tmp_path, sync=sync), stack)

        def layer(inner: Storage | AsyncStorage) -> Counted | AsyncCounted:
            if isinstance(inner, LocalStorage):
                return Counted(inner)
            assert isinstance(inner, AsyncLocalStorage)
            return AsyncCounted(inner)

        wrapped = backend.wrap(layer)
        assert (wrapped.sync, wrapped.ready) == (backend.sync, backend.ready)
        if sync:
            assert isinstance(wrapped.storage, Counted)
            wrapped.storage.open("a.txt").body.close()
        else:
            assert isinstance(wrapped.storage, AsyncCounted)
            await (await wrapped.storage.open("a.txt")).body.aclose()
        assert wrapped.storage.opens == 1


def test_settings_become_the_backends_options(tmp_path: Path) -> None:
    local = Settings(local_root=tmp_path, flavor="sync", local_open_files=7)
    assert local.storage_options() == LocalOptions(tmp_path, 7, sync=True)
    assert local.sync is True
    s3 = Settings(
        backend="s3",
        s3_bucket="media",
        s3_prefix="v",
        s3_client="boto3",
        s3_endpoint_url="http://127.0.0.1:9",
        s3_region="eu-west-1",
        s3_profile="p",
        s3_addressing_style="path",
        s3_pool_size=9,
        s3_connect_timeout=1.5,
        s3_read_timeout=2.5,
        s3_max_attempts=4,
        s3_presigned_gets=False,
    )
    assert s3.storage_options() == S3Options(
        bucket="media",
        prefix="v",
        client="boto3",
        endpoint_url="http://127.0.0.1:9",
        region="eu-west-1",
        profile="p",
        addressing_style="path",
        pool_size=9,
        connect_timeout=1.5,
        read_timeout=2.5,
        max_attempts=4,
        deadline=5.0,  # PROXY_S3_DEADLINE unset: twice the read timeout
        resume_attempts=2,
        presigned_gets=False,
    )
    assert s3.sync is True
    assert Settings(backend="s3", s3_bucket="media").sync is False  # aiobotocore by default
    chosen = Settings(backend="s3", s3_bucket="m", s3_deadline=4, s3_resume_attempts=0)
    assert (chosen.s3_options().deadline, chosen.s3_options().resume_attempts) == (4.0, 0)
