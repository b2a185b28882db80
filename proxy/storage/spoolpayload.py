"""How aiohttp sends a spooled part (``s3write._Spool``) for the aiobotocore flavour's PutObject
and UploadPart: by ``sendfile`` from the spool to the connection's socket on plain TCP, as the
proxy's zero-copy responses go (``proxy.sendfile``); else read on the event loop while the page
cache holds it, the same way ``proxy.storage.local`` reads files. Either replaces aiohttp's
``IOBasePayload``, which reads every 256 KiB in a thread of the loop's default executor.

``sendfile`` needs aiohttp's plain request writer (no chunking, compression or tracing, which
must see the bytes) and a socket without TLS: the writer's buffered head goes first, then the
part from the page cache to the socket, waiting on the event loop while S3 is slow to read, in
4 MiB steps whose pages are checked first (``_FileBody.cached``, as the local backend's
downloads do): a step the page cache lost is loaded in a worker thread, so that ``sendfile``
never waits for the disk on the event loop.
Otherwise, a part was just written, so its pages are in the page cache: a ``preadv`` with
``RWF_NOWAIT`` copies them without waiting (a thread hop costs more than the copy); a read that
would wait for the disk (evicted under memory pressure, or a filesystem that cannot tell) runs
in a worker thread. Registered with aiohttp's payload registry (``register_payload``) for the
spool type only; imported by the aiobotocore writer, so the boto3 flavour never imports
aiohttp. Measured in docs/design.md, "Uploads: memory".
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from aiohttp.abc import AbstractStreamWriter
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.http_writer import StreamWriter
from aiohttp.payload import Order, Payload, register_payload

from proxy.sendfile import send_file, socket_fd
from proxy.storage.local import _FileBody, _read_cached, _read_step

READ_SIZE = 256 * 1024  # bytes per read (aiohttp's own chunk size for file payloads)
SEND_STEP = 4 * 1024 * 1024  # bytes per sendfile step, its pages checked first (as downloads)


class SpoolPayload(Payload):
    """A sealed spool's ``length`` bytes from its start, whatever its position (botocore seeks
    it to sign and to retry). Never closes the spool: the upload does, after the call."""

    def __init__(self, value: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(value, *args, **kwargs)
        self._length = int(value.length)
        self._size = self._length

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a spooled part is bytes, not text")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        """By ``sendfile`` where the writer and connection allow it; else the local backend's
        reads (``_read_cached`` on the loop, ``_read_step`` in a thread). Either raises
        ``BodyTruncated`` should the part end early."""
        size = self._length if content_length is None else min(self._length, content_length)
        fd = self._value.fileno()
        if size and await _sent_by_sendfile(writer, fd, size):
            return
        offset = 0
        while offset < size:
            chunk = _read_cached(fd, offset, size, READ_SIZE)
            if chunk is None:
                chunk = await anyio.to_thread.run_sync(_read_step, fd, offset, size, READ_SIZE)
            await writer.write(chunk)
            offset += len(chunk)


async def _sent_by_sendfile(writer: AbstractStreamWriter, fd: int, size: int) -> bool:
    """``size`` bytes of ``fd`` from its start sent by ``sendfile``, the request's buffered head
    first; False (nothing written) when this writer or connection cannot take them that way."""
    if (
        type(writer) is not StreamWriter
        or writer.chunked
        or getattr(writer, "_compress", None) is not None
        or getattr(writer, "_on_chunk_sent", None) is not None
        or getattr(writer, "on_body_write", None) is not None
        or (writer.length is not None and writer.length < size)
    ):
        return False
    transport = writer.transport
    out = None if transport is None else socket_fd(transport)
    if transport is None or out is None:
        return False
    writer.send_headers()
    if writer.length is not None:
        writer.length -= size
    writer.output_size += size
    pages = _FileBody(fd)
    offset = 0
    while offset < size:
        count = min(SEND_STEP, size - offset)
        if not pages.cached(offset, count):  # sendfile would wait for the disk on the loop
            await anyio.to_thread.run_sync(pages.load, offset, count)
        if not await send_file(transport, out, fd, offset, count):
            raise ClientConnectionResetError("the connection to S3 closed while a part was sent")
        offset += count
    return True


def register(spool_type: type) -> None:
    """aiohttp sends ``spool_type``'s bodies as ``SpoolPayload`` (idempotent)."""
    global _registered
    if not _registered:
        register_payload(SpoolPayload, spool_type, order=Order.try_first)
        _registered = True


_registered = False
