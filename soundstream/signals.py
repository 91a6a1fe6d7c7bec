"""Synthetic sensor audio for ``soundstream simulate``: a few tones plus noise per sensor.

Pure numpy. Every sample is a function of the sensor index and of the sample's
absolute position in the stream, so a sensor sounds the same however its stream is
cut into chunks, and chunks join without a click.
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
_MASK64 = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Tone:
    """A sine whose frequency glides slowly around ``hz`` and whose level pulses."""

    hz: float
    glide_depth: float  # Hz either side of ``hz``
    glide_hz: float
    am_depth: float  # 0: steady, 1: pulses down to silence
    am_hz: float
    amplitude: float
    phase: float
    gains: tuple[float, ...]  # per channel, the louder one 1.0

    def render(self, t: np.ndarray) -> np.ndarray:
        """The tone at times ``t`` (seconds), shape (len(t), channels)."""
        # The phase is the closed-form integral of the gliding frequency, so it is
        # continuous in t and needs no state carried from one chunk to the next.
        glide = 2 * math.pi * self.glide_hz * t
        phase = 2 * math.pi * self.hz * t + self.glide_depth / self.glide_hz * (1 - np.cos(glide))
        envelope = 1 - self.am_depth * 0.5 * (1 - np.cos(2 * math.pi * self.am_hz * t))
        wave = self.amplitude * envelope * np.sin(phase + self.phase)
        return np.outer(wave, self.gains)


@dataclass(frozen=True, slots=True)
class SensorSignal:
    """The endless signal of simulated sensor ``index``, at its own sample rate."""

    index: int
    sample_rate: int
    channels: int
    tones: tuple[Tone, ...]
    noise: float  # peak noise amplitude

    @classmethod
    def for_sensor(cls, index: int) -> SensorSignal:
        """The same index always gives the same signal; different indices differ."""
        rng = np.random.default_rng(index)
        rate = RATES[index % len(RATES)]
        channels = 2 if index % STEREO_EVERY == STEREO_EVERY - 1 else 1
        noise = float(rng.uniform(0.005, 0.05))
        count = int(rng.integers(2, 5))
        shares = rng.dirichlet(np.ones(count)) * (HEADROOM - noise)
        # Glides stay within 3 % of the tone, so the top tone stays below Nyquist.
        top = min(6000.0, 0.35 * rate)
        tones = []
        for share in shares:
            hz = float(np.exp(rng.uniform(math.log(60.0), math.log(top))))
            angle = rng.uniform(math.pi / 8, 3 * math.pi / 8)  # pan position
            left, right = math.cos(angle), math.sin(angle)
            gains = (left / max(left, right), right / max(left, right)) if channels == 2 else (1.0,)
            tones.append(
                Tone(
                    hz=hz,
                    glide_depth=hz * float(rng.uniform(0.0, 0.03)),
                    glide_hz=float(rng.uniform(0.02, 0.2)),
                    am_depth=float(rng.uniform(0.0, 0.6)),
                    am_hz=float(rng.uniform(0.1, 4.0)),
                    amplitude=float(share),
                    phase=float(rng.uniform(0.0, 2 * math.pi)),
                    gains=gains,
                )
            )
        return cls(index, rate, channels, tuple(tones), noise)

    def samples(self, start: int, count: int) -> np.ndarray:
        """Samples ``start .. start+count`` as float32 in [-1, 1]: shape (count,) for a
        mono sensor, (count, 2) for a stereo one."""
        t = np.arange(start, start + count, dtype=np.float64) / self.sample_rate
        out = np.zeros((count, self.channels))
        for tone in self.tones:
            out += tone.render(t)
        for channel in range(self.channels):
            out[:, channel] += self.noise * _noise(self.index, channel, start, count)
        result = out.astype(np.float32)
        return result[:, 0] if self.channels == 1 else result

    def chunk(self, k: int, chunk_samples: int) -> np.ndarray:
        """Chunk ``k`` of a stream cut into chunks of ``chunk_samples``."""
        return self.samples(k * chunk_samples, chunk_samples)


def _noise(index: int, channel: int, start: int, count: int) -> np.ndarray:
    """Noise on (-1, 1) keyed by sample position: a splitmix64 hash of the index.

    A seeded generator would make the noise depend on where chunks start; hashing the
    position makes it a pure function of (sensor, channel, sample).
    """
    seed = np.uint64(((2 * index + channel + 1) * 0xD1B54A32D192ED03) & _MASK64)
    # Unsigned array arithmetic wraps modulo 2**64, which is what the hash wants.
    x = np.arange(start, start + count, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + seed
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    # Two 32-bit uniforms from one hash; their difference is triangular on (-1, 1).
    high = (x >> np.uint64(32)).astype(np.float64)
    low = (x & np.uint64(0xFFFFFFFF)).astype(np.float64)
    return (high - low) / 2.0**32
