"""A small generated sample for a first run: text, JSON, a WAV tone and random bytes."""

from __future__ import annotations

import json
import math
import random
import struct
import wave
from pathlib import Path

SAMPLE_RATE = 16_000
TONE_SECONDS = 2
TONE_HZ = 440
BINARY_SIZE = 1024 * 1024


def _tone() -> bytes:
    frames = (
        int(12_000 * math.sin(2 * math.pi * TONE_HZ * i / SAMPLE_RATE))
        for i in range(SAMPLE_RATE * TONE_SECONDS)
    )
    return b"".join(struct.pack("<h", f) for f in frames)


def write_sample(root: Path) -> list[str]:
    """Create ``root`` with the sample objects; returns their keys."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "hello.txt").write_text("Hello from the media object proxy.\n", encoding="utf-8")
    about = {
        "name": "sample",
        "objects": ["hello.txt", "about.json", "audio/tone.wav", "random.bin"],
    }
    (root / "about.json").write_text(json.dumps(about, indent=2) + "\n", encoding="utf-8")
    (root / "audio").mkdir(exist_ok=True)
    with wave.open(str(root / "audio" / "tone.wav"), "wb") as tone:
        tone.setnchannels(1)
        tone.setsampwidth(2)
        tone.setframerate(SAMPLE_RATE)
        tone.writeframes(_tone())
    (root / "random.bin").write_bytes(random.Random(0).randbytes(BINARY_SIZE))
    return list(about["objects"])
