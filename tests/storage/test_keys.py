"""check_key: the key policy applied before any backend."""

from __future__ import annotations

import pytest

from proxy.storage.errors import InvalidKey, StorageError
from proxy.storage.keys import check_key

VALID = [
    "a",
    "video.mp4",
    "a/b/c.txt",
    "%2e%2e",  # keys arrive decoded: a literal percent is a strange name, not a traversal
    "%2e%2e/%2F",
    "...",
    "a/.../b",
    ".hidden",
    "a/.b",
    "a..b",
    "C:",  # a Windows drive means nothing on Linux
    "C:/x",
    "film (2024) [hd].mkv",
    "a b+c&d=e;f,g'h\"i",
    "ünïcødé/日本語.mp4",
    "emoji-🎬.webm",
    "\u00a0nbsp",  # U+00A0 is not a control character
    "a" * 1024,
    "é" * 512,  # 1024 UTF-8 bytes
]

INVALID = [
    "",
    ".",
    "..",
    "../x",
    "a/..",
    "a/../b",
    "./a",
    "a/./b",
    "a/.",
    "/etc/passwd",
    "/",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\x1fb",
    "a\nb",
    "a\tb",
    "a\x7fb",
    "a\x85b",  # C1 control (NEL)
    "a\x9fb",
    "a//b",
    "a/",
    "//a",
    "a" * 1025,
    "é" * 512 + "a",  # 1025 UTF-8 bytes, 513 characters
    "a\ud800b",  # a lone surrogate cannot be encoded
]


@pytest.mark.parametrize("key", VALID)
def test_valid_key_is_returned_unchanged(key: str) -> None:
    assert check_key(key) is key


@pytest.mark.parametrize("key", INVALID)
def test_invalid_key_raises(key: str) -> None:
    with pytest.raises(InvalidKey) as info:
        check_key(key)
    assert isinstance(info.value, StorageError)
    assert isinstance(info.value, ValueError)


def test_message_does_not_echo_the_key() -> None:
    with pytest.raises(InvalidKey) as info:
        check_key("secret/../x")
    assert "secret" not in str(info.value)
    assert str(info.value) == "the key has an empty, '.' or '..' segment"
