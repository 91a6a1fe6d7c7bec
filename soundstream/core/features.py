"""Spectral features of one chunk (DESIGN.md section 4): samples in, arrays out.

numpy, pyfftw and numba: no I/O, no logging, no broker or database library, so
everything it returns pickles. The definitions follow librosa with
``center=False``; the mel bank and the DCT are written out here because librosa
is a test-only reference.

A chunk is read once by the ``kernels.frames`` kernel (windowed frames for the
FFT, rms, zcr), transformed by one FFTW call, and each frame's spectrum is read
once by ``kernels.spectral`` (every spectral feature). The kernels are compiled
(or loaded from numba's cache) when the first ``Extractor`` is built, which a
pool worker does in ``warm_up``: importing this module alone does not load numba.

An ``Extractor`` owns FFTW plans whose arrays it reuses between calls, so one
instance must not be called from two threads at once. The service gives each
pool process its own through ``extractor_for``.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyfftw

from soundstream.core.fields import SCALARS, FeatureParams, Features

Array = npt.NDArray[np.float32]
Float64 = npt.NDArray[np.float64]
Int64 = npt.NDArray[np.int64]

# Plans are kept per frame count. Chunks from one sensor nearly always share a
# size, so a few plans cover a worker. Each plan pins its FFT input and output,
# about 16 bytes per sample of n_frames * n_fft; the sample budget bounds what a
# run of unusually long chunks can hold on to (about 34 MB), and a long chunk is
# taken in batches of at most MAX_BATCH_FRAMES.
MAX_PLANS = 8
MAX_PLANNED_SAMPLES = 1 << 21
MAX_BATCH_FRAMES = 256
# What ``warm_up`` extracts once: one second at 16 kHz (or one frame, if longer).
TYPICAL_SAMPLES = 16_000
TYPICAL_RATE = 16_000


def frame_count(n_samples: int, n_fft: int, hop: int) -> int:
    """Frames lying wholly inside a chunk: no padding, none crosses its end."""
    if n_samples < n_fft:
        return 0
    return 1 + (n_samples - n_fft) // hop


def hann(n: int) -> Float64:
    """The periodic ("fftbins") Hann window, as ``scipy.signal.get_window``."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def bin_frequencies(sample_rate: int, n_fft: int) -> Float64:
    """``f_k = k * sample_rate / n_fft`` for the ``1 + n_fft // 2`` rfft bins."""
    return np.arange(1 + n_fft // 2, dtype=np.float64) * (sample_rate / n_fft)


# Slaney's Auditory Toolbox mel scale (librosa's ``htk=False``): linear below
# 1 kHz, logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz: Float64) -> Float64:
    linear = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: Float64) -> Float64:
    linear = _F_SP * mel
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, linear)


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> Float64:
    """Slaney-normalised triangles, (n_mels, 1 + n_fft // 2), from 0 Hz to Nyquist.

    Same as ``librosa.filters.mel(htk=False, norm="slaney")``: band edges evenly
    spaced in mel, each triangle scaled to unit area in Hz so that wide bands do
    not outweigh narrow ones.
    """
    bins = bin_frequencies(sample_rate, n_fft)
    nyquist = hz_to_mel(np.array([sample_rate / 2], dtype=np.float64))[0]
    edges = mel_to_hz(np.linspace(0.0, nyquist, n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, np.newaxis] - bins
    rising = -ramps[:-2] / widths[:-1, np.newaxis]
    falling = ramps[2:] / widths[1:, np.newaxis]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, np.newaxis]


def dct_ortho(n_out: int, n_in: int) -> Float64:
    """The first ``n_out`` rows of the orthonormal DCT-II of length ``n_in``."""
    k = np.arange(n_out)[:, np.newaxis]
    n = np.arange(n_in)
    basis: Float64 = np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2 * n + 1) / (2 * n_in))
    basis[0] /= np.sqrt(2.0)
    return basis


@dataclass(frozen=True, slots=True, eq=False)
class _Bank:
    """Per-rate constants (read-only): bin frequencies and the mel bank.

    Band ``m`` covers only the bins between its neighbours' centres, so the bank is
    kept sparse: band ``m`` weighs bins ``mel_first[m]`` onwards by
    ``mel_weights[mel_offsets[m] : mel_offsets[m + 1]]``.
    """

    freqs: Float64
    mel_first: Int64
    mel_offsets: Int64
    mel_weights: Float64


@functools.lru_cache(maxsize=16)
def _bank(sample_rate: int, n_fft: int, n_mels: int) -> _Bank:
    dense = mel_filters(sample_rate, n_fft, n_mels)
    first = np.zeros(n_mels, dtype=np.int64)
    offsets = np.zeros(n_mels + 1, dtype=np.int64)
    weights = []
    for m, row in enumerate(dense):
        reached = np.flatnonzero(row)
        lo, hi = (int(reached[0]), int(reached[-1]) + 1) if len(reached) else (0, 0)
        first[m] = lo
        offsets[m + 1] = offsets[m] + hi - lo
        weights.append(row[lo:hi])
    bank = _Bank(
        freqs=bin_frequencies(sample_rate, n_fft),
        mel_first=first,
        mel_offsets=offsets,
        mel_weights=np.concatenate(weights),
    )
    for a in (bank.freqs, bank.mel_first, bank.mel_offsets, bank.mel_weights):
        a.flags.writeable = False
    return bank


def _smooth(n: int) -> bool:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


class Extractor:
    """Owns FFTW plans, window, DCT matrix and the compiled kernels for one FeatureParams."""

    def __init__(self, params: FeatureParams) -> None:
        if not (
            params.n_fft >= 2
            and params.hop >= 1
            and 1 <= params.n_mfcc <= params.n_mels
            and 0.0 < params.rolloff <= 1.0
        ):
            raise ValueError(
                f"need n_fft >= 2, hop >= 1, 1 <= n_mfcc <= n_mels, 0 < rolloff <= 1; got {params}"
            )
        # Imported here, not at the top: numba (about 60 MB resident, and the
        # kernels' compilation or loading from its cache) is for the processes
        # that compute features, not for every process that imports this module.
        from soundstream.core import kernels

        self.params = params
        self._frames = kernels.frames
        self._spectral = kernels.spectral
        self._window = hann(params.n_fft)
        # power_to_db's 10 * log10 folded into the DCT, as the kernel takes natural
        # logs; transposed, (n_mels, n_mfcc), for the kernel's loop order.
        dct = (10.0 / math.log(10.0)) * dct_ortho(params.n_mfcc, params.n_mels)
        self._dct = np.ascontiguousarray(dct.T)
        for a in (self._window, self._dct):
            a.flags.writeable = False
        # Measuring pays for itself when n_fft has only small factors: FFTW then
        # remembers the best 1-D transform and a new frame count plans in well
        # under a millisecond. For other sizes every frame count would be
        # measured afresh, taking seconds, for a gain of about a tenth.
        self._flags = ("FFTW_MEASURE",) if _smooth(params.n_fft) else ("FFTW_ESTIMATE",)
        self._plans: OrderedDict[int, _Work] = OrderedDict()

    def plan(self, n_frames: int) -> Any:
        """The (n_frames, n_fft) real-to-complex plan, built on first use."""
        return self._work(n_frames).fft

    def _work(self, n_frames: int) -> _Work:
        work = self._plans.get(n_frames)
        if work is not None:
            self._plans.move_to_end(n_frames)
            return work
        work = _Work(self.params.n_fft, n_frames, self._flags)
        self._plans[n_frames] = work
        while len(self._plans) > 1 and (
            len(self._plans) > MAX_PLANS
            or sum(self._plans) * self.params.n_fft > MAX_PLANNED_SAMPLES
        ):
            self._plans.popitem(last=False)
        return work

    def __call__(self, samples: np.ndarray[Any, Any], sample_rate: int) -> Features:
        p = self.params
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"samples must be one-dimensional, got shape {x.shape}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        n = frame_count(len(x), p.n_fft, p.hop)
        if n == 0:
            empty = np.zeros(0, dtype=np.float32)
            return Features(
                **dict.fromkeys(SCALARS, empty),
                mel=np.zeros((0, p.n_mels), dtype=np.float32),
                mfcc=np.zeros((0, p.n_mfcc), dtype=np.float32),
            )
        # A contiguous float32 copy only where the caller's samples are not one.
        x = np.ascontiguousarray(x[: (n - 1) * p.hop + p.n_fft])
        if n <= MAX_BATCH_FRAMES:
            return self._extract(x, n, sample_rate)
        parts = []
        for first in range(0, n, MAX_BATCH_FRAMES):
            count = min(MAX_BATCH_FRAMES, n - first)
            start = first * p.hop
            parts.append(
                self._extract(x[start : start + (count - 1) * p.hop + p.n_fft], count, sample_rate)
            )
        return Features(
            **{
                name: np.concatenate([getattr(part, name) for part in parts])
                for name in (*SCALARS, "mel", "mfcc")
            }
        )

    def _extract(self, x: Array, n: int, sample_rate: int) -> Features:
        """Features of the ``n`` frames of ``x``, contiguous and exactly that long."""
        p = self.params
        work = self._work(n)
        bank = _bank(sample_rate, p.n_fft, p.n_mels)
        scalars = np.empty((len(SCALARS), n), dtype=np.float32)  # rows in SCALARS order
        mel = np.empty((n, p.n_mels), dtype=np.float32)
        mfcc = np.empty((n, p.n_mfcc), dtype=np.float32)
        self._frames(x, p.hop, self._window, work.fft.input_array, scalars)
        work.fft.execute()
        self._spectral(
            work.fft.output_array,
            bank.freqs,
            bank.mel_first,
            bank.mel_offsets,
            bank.mel_weights,
            self._dct,
            float(p.rolloff),
            scalars,
            mel,
            mfcc,
        )
        return Features(**dict(zip(SCALARS, scalars, strict=True)), mel=mel, mfcc=mfcc)


class _Work:
    """One frame count's FFTW plan, with the input and output arrays it owns."""

    def __init__(self, n_fft: int, n_frames: int, flags: tuple[str, ...]) -> None:
        # Double precision, as librosa: its STFT multiplies float32 frames by a
        # float64 window and transforms in float64 before rounding to complex64.
        # A float32 transform leaves rounding noise near 1e-7 of the peak in every
        # bin, which moves the bandwidth of a pure tone by several percent.
        source = pyfftw.empty_aligned((n_frames, n_fft), dtype=np.float64)
        spectrum = pyfftw.empty_aligned((n_frames, n_fft // 2 + 1), dtype=np.complex128)
        self.fft = pyfftw.FFTW(source, spectrum, axes=(-1,), flags=flags, threads=1)


@functools.lru_cache(maxsize=4)
def extractor_for(params: FeatureParams) -> Extractor:
    """The process's extractor for ``params``, built once and reused."""
    return Extractor(params)


def extract_many(
    params: FeatureParams, jobs: list[tuple[np.ndarray[Any, Any], int]]
) -> list[Features]:
    """Features of several ``(samples, sample_rate)`` chunks: one pool task's work.

    Batching chunks per task spreads the cost of pickling and of the round trip to
    the worker over several chunks.
    """
    extract = extractor_for(params)
    return [extract(samples, sample_rate) for samples, sample_rate in jobs]


def warm_up(params: FeatureParams) -> None:
    """Pool initializer: pay for the kernels and FFTW's measurements up front.

    Building the extractor compiles the kernels, or loads them from numba's cache
    (about 5 s, or 0.9 s); measuring the n_fft transform takes tens to hundreds of
    ms, and plans for other frame counts then reuse what FFTW learnt. One silent
    chunk goes through every step, so no live chunk is the first.
    """
    extract = extractor_for(params)
    extract(np.zeros(max(TYPICAL_SAMPLES, params.n_fft), dtype=np.float32), TYPICAL_RATE)
