"""The baseline's features: the same definitions in numpy and pyfftw only.

``bench/naive.py`` computes features with this module, so the consumer a user
writes first keeps what a user would write: numpy, not the service's compiled
kernels (``soundstream.core.kernels``). It is the service's own numpy
implementation from before those kernels, kept here unchanged as the baseline; the
tests hold the service, not this file, to librosa.
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
from numpy.lib.stride_tricks import sliding_window_view

from soundstream.core.features import (
    _smooth,
    bin_frequencies,
    dct_ortho,
    frame_count,
    hann,
    mel_filters,
)
from soundstream.core.fields import SCALARS, FeatureParams, Features

Array = npt.NDArray[np.float32]
Float64 = npt.NDArray[np.float64]

ZCR_THRESHOLD = 1e-10  # librosa.zero_crossings: smaller magnitudes count as +0
AMIN = 1e-10  # power floor of spectral_flatness and power_to_db
# Plans are kept per frame count. Chunks from one sensor nearly always share a
# size, so a few plans cover a worker. Each plan pins its FFT input and output and
# the buffers the features reuse, about 34 bytes per sample of n_frames * n_fft;
# the sample budget bounds what a run of unusually long chunks can hold on to
# (about 70 MB), and a long chunk is taken in batches of at most MAX_BATCH_FRAMES.
MAX_PLANS = 8
MAX_PLANNED_SAMPLES = 1 << 21
MAX_BATCH_FRAMES = 256
# Frame count that ``warm_up`` plans for: one second at 16 kHz with the defaults.
TYPICAL_SAMPLES = 16_000


@dataclass(frozen=True, slots=True, eq=False)
class _Bank:
    """Per-rate constants (read-only): bin frequencies and powers, the mel bank."""

    freqs: Float64
    moments: Float64  # (3, bins): 1, f, f**2
    # The mel bank in single precision, cut into (first band, first bin, block):
    # band m only covers the bins between its neighbours' centres, so most of
    # the dense (n_mels, bins) matrix is 0 and a few diagonal blocks hold it all.
    mel_blocks: tuple[tuple[int, int, Array], ...]


# What one more block costs, in multiply-adds per frame: the call overheads of
# a product and a sum (a few microseconds), at 16 kHz and 48 kHz chunks alike.
_BLOCK_COST = 1500


def _mel_blocks(bank: Float64) -> tuple[tuple[int, int, Array], ...]:
    """Split ``bank`` into diagonal blocks whose product costs least.

    Cuts fall where a band starts; each block holds the bands that reach any of
    its bins. Dynamic programming over the cuts, minimising multiply-adds plus
    ``_BLOCK_COST`` per block.
    """
    n_bins = bank.shape[1]
    reach = bank != 0
    starts = [int(np.argmax(row)) for row in reach if row.any()]
    cuts = sorted({0, n_bins, *starts})

    def bands(lo: int, hi: int) -> tuple[int, int]:
        touched = np.flatnonzero(reach[:, lo:hi].any(axis=1))
        return (int(touched[0]), int(touched[-1]) + 1) if len(touched) else (0, 0)

    best = [0.0] + [np.inf] * (len(cuts) - 1)
    choice = [0] * len(cuts)
    for j in range(1, len(cuts)):
        for i in range(j):
            first, last = bands(cuts[i], cuts[j])
            cost = best[i] + (last - first) * (cuts[j] - cuts[i]) + _BLOCK_COST
            if cost < best[j]:
                best[j], choice[j] = cost, i
    blocks = []
    j = len(cuts) - 1
    while j > 0:
        i = choice[j]
        first, last = bands(cuts[i], cuts[j])
        if last > first:
            block = bank[first:last, cuts[i] : cuts[j]].astype(np.float32)
            block.flags.writeable = False
            blocks.append((first, cuts[i], block))
        j = i
    return tuple(reversed(blocks))


@functools.lru_cache(maxsize=16)
def _bank(sample_rate: int, n_fft: int, n_mels: int) -> _Bank:
    freqs = bin_frequencies(sample_rate, n_fft)
    bank = _Bank(
        freqs=freqs,
        moments=np.stack([np.ones_like(freqs), freqs, np.square(freqs)]),
        mel_blocks=_mel_blocks(mel_filters(sample_rate, n_fft, n_mels)),
    )
    for a in (bank.freqs, bank.moments):
        a.flags.writeable = False
    return bank


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
        # 10 * log10 of the mel bands (power_to_db) folded into the DCT.
        self._dct_db = 10.0 * dct_ortho(params.n_mfcc, params.n_mels)
        self._block = math.gcd(params.n_fft, params.hop)
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
        n_bins = bank.freqs.shape[0]

        frames = np.ndarray((n, p.n_fft), np.float32, x, strides=(p.hop * 4, 4))
        np.multiply(frames, self._window, out=work.fft.input_array)
        work.fft.execute()
        # The transform writes (bins, frames), librosa's layout: a sum over bins
        # is then a sum of contiguous rows, which numpy vectorises.
        np.square(work.spectrum.view(np.float64), out=work.squares)
        power = work.power
        np.add(work.squares[:, 0::2], work.squares[:, 1::2], out=power)
        spec = work.spec[:n_bins]
        np.sqrt(power, out=spec)

        out = work.scalars  # rows in SCALARS order, float64 until the end
        rms, zcr, centroid, bandwidth, rolloff, flatness, dominant = out
        # Sums of squares over blocks of gcd(n_fft, hop) samples, each once: in
        # float32, as librosa.feature.rms (dtype=float32), where a block of 512
        # keeps about 1e-6 of its sum; both round samples below 1e-19 to silence.
        blocks = x.reshape(-1, self._block)
        squares = np.einsum("ij,ij->i", blocks, blocks)
        np.sqrt(self._frame_sums(squares.astype(np.float64), n), out=rms)
        rms *= 1.0 / np.sqrt(p.n_fft)
        np.divide(self._zero_crossings(x, n), p.n_fft, out=zcr)

        # Centroid and bandwidth from the moments of S over frequency, in double
        # precision: the bandwidth's m2/m0 - centroid**2 then cancels harmlessly (a
        # pure tone keeps about 1e-10 of its width). librosa leaves a silent frame
        # at 0, where this divides by 1 instead of 0.
        moments = bank.moments @ spec
        total, first, second = moments
        np.take(bank.freqs, self._rolloff_bins(spec, total, work), out=rolloff)
        silent = total <= 0
        total += silent
        np.divide(first, total, out=centroid)
        np.divide(second, total, out=second)
        second -= np.square(centroid)
        np.sqrt(np.maximum(second, 0.0, out=second), out=bandwidth)

        self._flatness(power, work, out=flatness)
        # Single precision, as librosa's own mel spectrogram: every term is >= 0, so
        # the sums keep about 1e-6 of their value. Its argmax is faster too, and
        # float32 rounding can only tie bins that are within 1e-7 of each other.
        np.copyto(work.power32, power, casting="same_kind")
        np.take(bank.freqs[1:], np.argmax(work.power32[1:], axis=0), out=dominant)
        mel = np.zeros((p.n_mels, n), dtype=np.float32)
        for band, bin_, block in bank.mel_blocks:
            mel[band : band + block.shape[0]] += block @ work.power32[bin_ : bin_ + block.shape[1]]
        mfcc = self._dct_db @ np.log10(np.maximum(mel, AMIN), dtype=np.float64)

        scalars = out.astype(np.float32)
        return Features(
            **dict(zip(SCALARS, scalars, strict=True)),
            mel=np.ascontiguousarray(mel.T),
            mfcc=np.ascontiguousarray(mfcc.T, dtype=np.float32),
        )

    def _frame_sums(self, blocks: npt.NDArray[Any], n: int) -> npt.NDArray[Any]:
        """Each frame's sum of per-block sums, blocks of gcd(n_fft, hop) samples."""
        p = self.params
        per_frame, step = p.n_fft // self._block, p.hop // self._block
        if per_frame > 8:
            wide: npt.NDArray[Any] = sliding_window_view(blocks, per_frame)[::step].sum(axis=1)
            return wide
        sums = blocks[: step * n : step].copy()
        for j in range(1, per_frame):
            sums += blocks[j : j + step * n : step]
        return sums

    def _zero_crossings(self, x: Array, n: int) -> npt.NDArray[Any]:
        # librosa zeroes samples with |x| <= 1e-10 and counts zero as positive, so
        # a sample is negative exactly when x < -1e-10. Flip p lies between samples
        # p and p + 1; frame i holds the flips start <= p < start + n_fft - 1, that
        # is the flips of its n_fft samples but the last.
        p = self.params
        negative = x < -ZCR_THRESHOLD
        flips = np.zeros(len(x), dtype=np.bool_)
        np.not_equal(negative[1:], negative[:-1], out=flips[:-1])
        blocks = flips.view(np.int8).reshape(-1, self._block).sum(axis=1, dtype=np.int32)
        sums = self._frame_sums(blocks, n)
        sums -= flips[p.n_fft - 1 :: p.hop][:n]
        return sums

    def _rolloff_bins(self, spec: Float64, total: Float64, work: _Work) -> npt.NDArray[np.intp]:
        """First bin whose running total reaches ``rolloff`` of the frame's total.

        numpy's cumsum along bins is a chain of dependent adds per frame. Here the
        running totals of blocks of 16 bins find the block that crosses the
        threshold; only that block's 16 bins are then summed one by one.
        """
        # Row k of ``running`` is the total of the blocks before block k.
        running = work.running
        np.matmul(_ONES_16, work.spec_blocks, out=running[1:])
        np.cumsum(running[1:], axis=0, out=running[1:])
        threshold = self.params.rolloff * total
        # Running totals never decrease, so the first bin (or block) reaching the
        # threshold is the count of those below it. Silence: none is below 0.
        block = np.add.reduce(running[1:] < threshold, axis=0, dtype=np.intp)
        # Rounding may leave every block total below the threshold: take the last.
        np.minimum(block, running.shape[0] - 2, out=block)
        frames = work.frame_index
        inner = work.spec_blocks[block, :, frames]  # (frames, 16)
        np.cumsum(inner, axis=1, out=inner)
        inner += running[block, frames][:, np.newaxis]
        below = np.add.reduce(inner < threshold[:, np.newaxis], axis=1, dtype=np.intp)
        block *= 16
        block += below
        bins: npt.NDArray[np.intp] = np.minimum(block, spec.shape[0] - 1, out=block)
        return bins

    def _flatness(self, power: Float64, work: _Work, out: Float64) -> Float64:
        """exp(mean(log P)) / mean(P) with P floored, logs taken of 16-bin products.

        A product of 16 floored powers stays within double range (>= 1e-160) unless
        a bin exceeds 1e19, where the logs are taken bin by bin instead.
        """
        floored = np.maximum(power, AMIN, out=work.floored)
        n_bins = floored.shape[0]
        g = n_bins // 16
        log_sum: Float64 | None = None
        if g:
            prod = floored[: 16 * g].reshape(16, g, -1)
            # Overflow (to inf) is caught below, by the sum of the logs.
            with np.errstate(over="ignore"):
                half = np.multiply(prod[:8], prod[8:], out=work.half)
                quarter = half[:4] * half[4:]
                quarter[:2] *= quarter[2:]
                quarter[0] *= quarter[1]
            log_sum = np.log(quarter[0]).sum(axis=0)
            if 16 * g < n_bins:
                log_sum += np.log(floored[16 * g :]).sum(axis=0)
            if not math.isfinite(log_sum.sum()):
                log_sum = None
        if log_sum is None:
            log_sum = np.log(floored).sum(axis=0)
        log_sum *= 1.0 / n_bins
        np.exp(log_sum, out=out)
        out *= n_bins
        out /= _ones(n_bins) @ floored
        return out


@functools.lru_cache(maxsize=8)
def _ones(n: int) -> Float64:
    ones = np.ones(n)
    ones.flags.writeable = False
    return ones


_ONES_16 = _ones(16)


class _Work:
    """One frame count's FFTW plan and the buffers the features reuse."""

    def __init__(self, n_fft: int, n_frames: int, flags: tuple[str, ...]) -> None:
        n_bins = n_fft // 2 + 1
        # Double precision, as librosa: its STFT multiplies float32 frames by a
        # float64 window and transforms in float64 before rounding to complex64.
        # A float32 transform leaves rounding noise near 1e-7 of the peak in every
        # bin, which moves the bandwidth of a pure tone by several percent.
        source = pyfftw.empty_aligned((n_frames, n_fft), dtype=np.float64)
        self.spectrum = pyfftw.empty_aligned((n_bins, n_frames), dtype=np.complex128)
        self.fft = pyfftw.FFTW(source, self.spectrum.T, axes=(-1,), flags=flags, threads=1)
        self.squares = np.empty((n_bins, 2 * n_frames))
        self.power = np.empty((n_bins, n_frames))
        # |S| padded with zero bins to whole blocks of 16 for the rolloff.
        n_blocks = -(-n_bins // 16)
        self.spec = np.zeros((n_blocks * 16, n_frames))
        self.spec_blocks = self.spec.reshape(n_blocks, 16, n_frames)
        self.running = np.zeros((n_blocks + 1, n_frames))
        self.frame_index = np.arange(n_frames)
        self.floored = np.empty((n_bins, n_frames))
        self.power32 = np.empty((n_bins, n_frames), dtype=np.float32)
        self.half = np.empty((8, n_bins // 16, n_frames))
        self.scalars = np.empty((len(SCALARS), n_frames))


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
