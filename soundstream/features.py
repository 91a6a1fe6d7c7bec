"""Spectral features of one chunk (DESIGN.md section 4): samples in, arrays out.

Pure numpy and pyfftw: no I/O, no logging, no broker or database library, so a
process-pool worker imports it cheaply and everything it returns pickles. The
definitions follow librosa with ``center=False``; the mel bank and the DCT are
written out here because librosa is a test-only reference.

An ``Extractor`` owns FFTW plans whose arrays it reuses between calls, so one
instance must not be called from two threads at once. The service gives each
pool process its own through ``extractor_for``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyfftw
from numpy.lib.stride_tricks import sliding_window_view

from soundstream.config import FeatureParams

Array = npt.NDArray[np.float32]
Float64 = npt.NDArray[np.float64]

SCALARS: tuple[str, ...] = (
    "rms",
    "zcr",
    "centroid",
    "bandwidth",
    "rolloff",
    "flatness",
    "dominant_hz",
)

ZCR_THRESHOLD = 1e-10  # librosa.zero_crossings: smaller magnitudes count as +0
AMIN = 1e-10  # power floor of spectral_flatness and power_to_db
# Plans are kept per frame count. Chunks from one sensor nearly always share a
# size, so a few plans cover a worker. Each plan pins an input and an output of
# about n_frames * n_fft doubles; the sample budget bounds what a run of unusually
# long chunks can hold on to.
MAX_PLANS = 8
MAX_PLANNED_SAMPLES = 1 << 22
# Frame count that ``warm_up`` plans for: one second at 16 kHz with the defaults.
TYPICAL_SAMPLES = 16_000


@dataclass(frozen=True, slots=True, eq=False)
class Features:
    """One row per frame; ``mel`` and ``mfcc`` are (frames, n_mels / n_mfcc)."""

    rms: Array
    zcr: Array
    centroid: Array
    bandwidth: Array
    rolloff: Array
    flatness: Array
    dominant_hz: Array
    mel: Array
    mfcc: Array

    def __len__(self) -> int:
        return len(self.rms)


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


@functools.lru_cache(maxsize=16)
def _bank(sample_rate: int, n_fft: int, n_mels: int) -> tuple[Float64, Float64]:
    """Bin frequencies and the transposed mel bank for one rate (read-only)."""
    freqs = bin_frequencies(sample_rate, n_fft)
    mel_t = np.ascontiguousarray(mel_filters(sample_rate, n_fft, n_mels).T)
    freqs.flags.writeable = False
    mel_t.flags.writeable = False
    return freqs, mel_t


def _smooth(n: int) -> bool:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


class Extractor:
    """Owns FFTW plans, window, mel banks, DCT matrix for one FeatureParams."""

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
        self.params = params
        self._window = hann(params.n_fft)
        self._dct_t = np.ascontiguousarray(dct_ortho(params.n_mfcc, params.n_mels).T)
        # Measuring pays for itself when n_fft has only small factors: FFTW then
        # remembers the best 1-D transform and a new frame count plans in well
        # under a millisecond. For other sizes every frame count would be
        # measured afresh, taking seconds, for a gain of about a tenth.
        self._flags = ("FFTW_MEASURE",) if _smooth(params.n_fft) else ("FFTW_ESTIMATE",)
        self._plans: OrderedDict[int, Any] = OrderedDict()

    def plan(self, n_frames: int) -> Any:
        """The (n_frames, n_fft) real-to-complex plan, built on first use."""
        plan = self._plans.get(n_frames)
        if plan is not None:
            self._plans.move_to_end(n_frames)
            return plan
        n_fft = self.params.n_fft
        # Double precision, as librosa: its STFT multiplies float32 frames by a
        # float64 window and transforms in float64 before rounding to complex64.
        # A float32 transform leaves rounding noise near 1e-7 of the peak in every
        # bin, which moves the bandwidth of a pure tone by several percent.
        source = pyfftw.empty_aligned((n_frames, n_fft), dtype=np.float64)
        target = pyfftw.empty_aligned((n_frames, n_fft // 2 + 1), dtype=np.complex128)
        plan = pyfftw.FFTW(source, target, axes=(-1,), flags=self._flags, threads=1)
        self._plans[n_frames] = plan
        while len(self._plans) > 1 and (
            len(self._plans) > MAX_PLANS or sum(self._plans) * n_fft > MAX_PLANNED_SAMPLES
        ):
            self._plans.popitem(last=False)
        return plan

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
        frames = sliding_window_view(x, p.n_fft)[:: p.hop]

        plan = self.plan(n)
        np.multiply(frames, self._window, out=plan.input_array)
        plan.execute()
        spec: Float64 = np.abs(plan.output_array)
        power = np.square(spec)
        freqs, mel_t = _bank(sample_rate, p.n_fft, p.n_mels)

        # Squares in float64 first: a frame's sum is then exact enough, and a
        # silent frame sums to exactly 0.
        square = np.square(x, dtype=np.float64)
        rms = np.sqrt(sliding_window_view(square, p.n_fft)[:: p.hop].mean(axis=1))

        # librosa zeroes samples with |x| <= 1e-10 and counts zero as positive, so
        # a sample is negative exactly when x < -1e-10. Frames overlap, so find the
        # sign flips once for the chunk: flip p lies between samples p and p + 1,
        # and frame i holds the flips with start <= p < start + n_fft - 1.
        negative = x < -ZCR_THRESHOLD
        flips = np.flatnonzero(negative[1:] != negative[:-1])
        starts = np.arange(n) * p.hop
        inside = np.searchsorted(flips, starts + p.n_fft - 1) - np.searchsorted(flips, starts)
        zcr = inside / p.n_fft

        # librosa leaves an all-zero column of S at zero when normalising it, so a
        # silent frame has centroid and bandwidth 0.
        total = spec.sum(axis=1)
        share = np.divide(
            spec, total[:, np.newaxis], out=np.zeros_like(spec), where=total[:, np.newaxis] > 0
        )
        centroid = share @ freqs
        bandwidth = np.sqrt(
            np.einsum("ij,ij->i", share, np.square(freqs - centroid[:, np.newaxis]))
        )

        running = np.cumsum(spec, axis=1)
        # Silence: every running total is 0 >= 0, so the first bin, 0 Hz.
        rolloff = freqs[np.argmax(running >= p.rolloff * running[:, -1:], axis=1)]

        floored = np.maximum(power, AMIN)
        flatness = np.exp(np.log(floored).mean(axis=1)) / floored.mean(axis=1)

        dominant = freqs[1 + np.argmax(spec[:, 1:], axis=1)]

        mel = power @ mel_t
        mfcc = (10.0 * np.log10(np.maximum(mel, AMIN))) @ self._dct_t

        def f32(a: npt.NDArray[Any]) -> Array:
            return np.ascontiguousarray(a, dtype=np.float32)

        return Features(
            rms=f32(rms),
            zcr=f32(zcr),
            centroid=f32(centroid),
            bandwidth=f32(bandwidth),
            rolloff=f32(rolloff),
            flatness=f32(flatness),
            dominant_hz=f32(dominant),
            mel=f32(mel),
            mfcc=f32(mfcc),
        )


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
    """Pool initializer: pay for the extractor and FFTW's measurements up front.

    Measuring the n_fft transform is the slow part (tens to hundreds of ms); once
    done, plans for other frame counts reuse what FFTW learnt.
    """
    extract = extractor_for(params)
    extract.plan(max(1, frame_count(TYPICAL_SAMPLES, params.n_fft, params.hop)))
