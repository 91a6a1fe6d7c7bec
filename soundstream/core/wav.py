"""RIFF/WAVE reading and writing for PCM 16-bit and IEEE float 32-bit.

The standard library's ``wave`` reads integer PCM only, so this small parser walks
the RIFF chunks itself. Pure: bytes in, samples out, or ``Malformed``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from soundstream.errors import Malformed

FORMAT_PCM = 0x0001
FORMAT_IEEE_FLOAT = 0x0003
FORMAT_EXTENSIBLE = 0xFFFE
# The first two bytes of a WAVE_FORMAT_EXTENSIBLE sub-format GUID are the format tag.
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


@dataclass(frozen=True, slots=True)
class WavAudio:
    sample_rate: int
    channels: int
    encoding: str  # "s16le" or "f32le", as on the wire
    data: bytes | memoryview


def parse(body: bytes) -> WavAudio:
    """Find the ``fmt `` and ``data`` chunks of a RIFF/WAVE file."""
    if len(body) < 12 or body[:4] != b"RIFF" or body[8:12] != b"WAVE":
        raise Malformed("wav: not a RIFF/WAVE file")
    view = memoryview(body)
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(body):
        chunk_id = bytes(view[pos : pos + 4])
        (size,) = struct.unpack_from("<I", body, pos + 4)
        start = pos + 8
        end = start + size
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(body[start:end])
        elif chunk_id == b"data":
            if fmt is None:
                raise Malformed("wav: data chunk before fmt chunk")
            if end > len(body):
                raise Malformed(f"wav: data chunk claims {size} bytes, {len(body) - start} present")
            tag, channels, rate, _bits = fmt
            encoding = "s16le" if tag == FORMAT_PCM else "f32le"
            return WavAudio(rate, channels, encoding, view[start:end])
        pos = end + (size & 1)  # chunks are word aligned
    raise Malformed("wav: no fmt chunk" if fmt is None else "wav: no data chunk")


def _parse_fmt(raw: bytes) -> tuple[int, int, int, int]:
    if len(raw) < 16:
        raise Malformed("wav: fmt chunk too short")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", raw)
    if tag == FORMAT_EXTENSIBLE:
        if len(raw) < 40 or raw[26:40] != _GUID_TAIL:
            raise Malformed("wav: unknown WAVE_FORMAT_EXTENSIBLE sub-format")
        (tag,) = struct.unpack_from("<H", raw, 24)
    if (tag, bits) not in ((FORMAT_PCM, 16), (FORMAT_IEEE_FLOAT, 32)):
        raise Malformed(f"wav: format {tag:#06x} with {bits} bits; need PCM 16-bit or float 32-bit")
    if channels not in (1, 2):
        raise Malformed(f"wav: {channels} channels; need 1 or 2")
    if block_align != channels * bits // 8:
        raise Malformed(f"wav: block align {block_align} does not match {channels}x{bits} bits")
    return tag, channels, rate, bits


def build(samples: np.ndarray, sample_rate: int, encoding: str = "s16le") -> bytes:
    """A complete WAV file of ``samples`` (frames x channels, or 1-D mono) in [-1, 1]."""
    frames = samples.reshape(len(samples), -1)
    channels = frames.shape[1]
    data = encode_samples(frames, encoding)
    tag, bits = (FORMAT_PCM, 16) if encoding == "s16le" else (FORMAT_IEEE_FLOAT, 32)
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, sample_rate, sample_rate * block, block, bits)
    pad = b"\x00" if len(data) & 1 else b""
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data + pad
    return b"RIFF" + struct.pack("<I", len(body)) + body


def encode_samples(samples: np.ndarray, encoding: str) -> bytes:
    """Samples in [-1, 1] (any shape, interleaved in C order) -> little-endian bytes."""
    if encoding == "s16le":
        return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()
    if encoding == "f32le":
        return samples.astype("<f4").tobytes()
    raise ValueError(f"unknown encoding {encoding!r}")
