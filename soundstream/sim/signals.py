"""Synthetic sensor audio for ``soundstream simulate``: a few tones plus noise per sensor.

Each sensor sounds like a machine whose speed drifts slowly: its tones glide together
by the same ratio, each pulses at its own rate, and there is a little noise. Pure
numpy. Every sample is a function of the sensor index and of the sample's absolute
position in the stream, so a sensor sounds the same however its stream is cut into
chunks, and chunks join without a click.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RATES = (16000, 22050, 44100, 48000, 8000)
# Every fourth sensor is stereo, so a simulated fleet exercises the channels=2 path.
STEREO_EVERY = 4
# Tone and noise amplitudes add up to at most this, so no sample leaves [-1, 1].
HEADROOM = 0.9


@dataclass(frozen=True, slots=True)
class Tone:
    """A sine at ``hz`` (before the glide) whose level pulses at ``am_hz``."""

    hz: float
    am_depth: float  # 0: steady, 1: pulses down to silence
    am_hz: float
    amplitude: float
    phase: float  # in turns
    gains: tuple[float, ...]  # per channel, the louder one 1.0


@dataclass(frozen=True, slots=True)
class SensorSignal:
    """The endless signal of simulated sensor ``index``, at its own sample rate."""

    index: int
    sample_rate: int
    channels: int
    tones: tuple[Tone, ...]
    noise: float  # peak noise amplitude
    glide_depth: float = 0.0  # every frequency swings by this share either way
    glide_hz: float = 0.1

    @classmethod
    def for_sensor(cls, index: int) -> SensorSignal:
        """The same index always gives the same signal; different indices differ."""
        rng = np.random.default_rng(index)
        rate = RATES[index % len(RATES)]
        channels = 2 if index % STEREO_EVERY == STEREO_EVERY - 1 else 1
        noise = float(rng.uniform(0.005, 0.05))
        count = int(rng.integers(2, 5))
        shares = rng.dirichlet(np.ones(count)) * (HEADROOM - noise)
        # With at most a 3 % glide the top tone stays well below Nyquist.
        top = min(6000.0, 0.35 * rate)
        tones = []
        for share in shares:
            angle = rng.uniform(math.pi / 8, 3 * math.pi / 8)  # pan position
            left, right = math.cos(angle), math.sin(angle)
            gains = (left / max(left, right), right / max(left, right)) if channels == 2 else (1.0,)
            tones.append(
                Tone(
                    hz=float(np.exp(rng.uniform(math.log(60.0), math.log(top)))),
                    am_depth=float(rng.uniform(0.0, 0.6)),
                    am_hz=float(rng.uniform(0.1, 4.0)),
                    amplitude=float(share),
                    phase=float(rng.uniform(0.0, 1.0)),
                    gains=gains,
                )
            )
        glide_depth = float(rng.uniform(0.0, 0.03))
        glide_hz = float(rng.uniform(0.02, 0.2))
        return cls(index, rate, channels, tuple(tones), noise, glide_depth, glide_hz)

    def samples(self, start: int, count: int) -> np.ndarray:
        """Samples ``start .. start+count`` as float32 in [-1, 1]: shape (count,) for a
        mono sensor, (count, 2) for a stereo one."""
        t = np.arange(start, start + count, dtype=np.float64)
        t /= self.sample_rate
        # Frequencies follow hz * (1 + depth * sin(2 pi g t)); the phase is its integral
        # in closed form, hz * warped, so it needs no state carried between chunks.
        swing = self.glide_depth / (2 * math.pi * self.glide_hz)
        warped = _sin_turns(t * self.glide_hz + 0.25)  # cos(2 pi g t)
        warped *= -swing
        warped = warped + (t + swing)
        out = np.zeros((count, self.channels), dtype=np.float32)
        for tone in self.tones:
            wave = _sin_turns(warped * tone.hz + tone.phase)
            envelope = _sin_turns(t * tone.am_hz + 0.25)
            envelope *= tone.am_depth / 2
            envelope += 1 - tone.am_depth / 2  # 1 - depth * (1 - cos) / 2, in [1-depth, 1]
            wave *= envelope
            wave *= tone.amplitude
            for channel, gain in enumerate(tone.gains):
                out[:, channel] += gain * wave
        for channel in range(self.channels):
            out[:, channel] += self.noise * _noise(self.index, channel, start, count)
        return out[:, 0] if self.channels == 1 else out

    def chunk(self, k: int, chunk_samples: int) -> np.ndarray:
        """Chunk ``k`` of a stream cut into chunks of ``chunk_samples``."""
        return self.samples(k * chunk_samples, chunk_samples)


def _sin_turns(turns: np.ndarray) -> np.ndarray:
    """sin(2 pi turns) as float32.

    Whole turns are dropped in float64, where a position hours into the stream is
    still exact; the sine of the rest then runs in float32, which numpy vectorises
    many times faster. This is most of the cost of a chunk.
    """
    whole = np.rint(turns)
    np.subtract(turns, whole, out=whole)
    angle: np.ndarray = whole.astype(np.float32)
    angle *= np.float32(2 * math.pi)
    np.sin(angle, out=angle)
    return angle


def _noise(index: int, channel: int, start: int, count: int) -> np.ndarray:
    """Float32 noise on (-1, 1) keyed by sample position: a 32-bit integer hash
    (Wellons' lowbias32) of the index, so it repeats only after 2**32 samples.

    A seeded generator would make the noise depend on where chunks start; hashing the
    position makes it a pure function of (sensor, channel, sample).
    """
    # Unsigned arithmetic wraps modulo 2**32, which is what the hash wants.
    x = np.arange(start, start + count, dtype=np.uint64).astype(np.uint32)
    x += np.uint32(((2 * index + channel + 1) * 0x9E3779B9) & 0xFFFFFFFF)
    shifted = np.empty_like(x)
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x ^= np.right_shift(x, shift, out=shifted)
        x *= np.uint32(factor)
    x ^= np.right_shift(x, 16, out=shifted)
    # Two 16-bit uniforms from one hash; their difference is triangular on (-1, 1).
    high = (x >> 16).astype(np.float32)
    high -= (x & 0xFFFF).astype(np.float32)
    high *= np.float32(1 / 65536)
    return high
