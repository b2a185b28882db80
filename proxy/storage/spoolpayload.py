"""How aiohttp sends a spooled part (``s3write._Spool``) for the aiobotocore flavour's PutObject
and UploadPart: read on the event loop while the page cache holds it, the same way
``proxy.storage.local`` reads files, instead of aiohttp's ``IOBasePayload``, which reads every
256 KiB in a thread of the loop's default executor.

A part was just written, so its pages are in the page cache: a ``preadv`` with ``RWF_NOWAIT``
copies them without waiting (a thread hop costs more than the copy); a read that would wait
for the disk (evicted under memory pressure, or a filesystem that cannot tell) runs in a worker
thread. Registered with aiohttp's payload registry (``aiohttp.payload.register_payload``) for
the spool type only; imported by the aiobotocore writer, so the boto3 flavour never imports
aiohttp. Measured in docs/design.md, "Uploads: memory".
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Order, Payload, register_payload

from proxy.storage.local import _read_cached, _read_step

READ_SIZE = 256 * 1024  # bytes per read (aiohttp's own chunk size for file payloads)


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
        """The local backend's reads (``_read_cached`` on the loop, ``_read_step`` in a
        thread), which raise ``BodyTruncated`` should the part end early."""
        size = self._length if content_length is None else min(self._length, content_length)
        fd = self._value.fileno()
        offset = 0
        while offset < size:
            chunk = _read_cached(fd, offset, size, READ_SIZE)
            if chunk is None:
                chunk = await anyio.to_thread.run_sync(_read_step, fd, offset, size, READ_SIZE)
            await writer.write(chunk)
            offset += len(chunk)


def register(spool_type: type) -> None:
    """aiohttp sends ``spool_type``'s bodies as ``SpoolPayload`` (idempotent)."""
    global _registered
    if not _registered:
        register_payload(SpoolPayload, spool_type, order=Order.try_first)
        _registered = True


_registered = False
