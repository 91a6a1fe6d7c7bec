"""The features' arithmetic as two numba kernels, compiled when this module is imported.

``frames`` reads a chunk's samples once per frame: it writes the windowed frames
for the FFT and each frame's rms and zcr. ``spectral`` reads each frame's spectrum
once into two rows of ``n_bins`` doubles (power and magnitude) and computes every
spectral feature from those, while they sit in L1 cache. The definitions are
DESIGN.md section 4; ``features`` owns the constants (window, mel bank, DCT).

Both kernels are compiled for explicit signatures, with further compilation
disabled, so a call with other argument types raises ``TypeError`` rather than
compiling on a live chunk. Compiled code is cached on disk (numba's ``cache=True``:
``NUMBA_CACHE_DIR`` if set, else ``__pycache__`` next to this file, else the
user's cache directory); where none of them is writable, numba refuses to cache
at all, and this module then compiles in every process that imports it. On the
2-core bench machine importing it takes about 5 s when it compiles and 0.9 s from
the cache, and leaves the process about 110 MB more resident (numba, LLVM) and
200 MB more address space, so ``features`` imports it only when it builds an
``Extractor``.

Reductions whose terms are all >= 0 (sums of squares, magnitudes, powers, their
weighted sums; products of floored powers) are compiled with fast-math
reassociation, so LLVM vectorises them: reordering such a sum keeps its error
bound (n * eps of the sum), unlike a sum of mixed signs. Everything else is
compiled with strict IEEE semantics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from numba import njit, types

Float32 = npt.NDArray[np.float32]
Float64 = npt.NDArray[np.float64]
Complex128 = npt.NDArray[np.complex128]
Int64 = npt.NDArray[np.int64]

# librosa.zero_crossings zeroes |x| <= 1e-10, compared in single precision.
ZCR_THRESHOLD = np.float32(1e-10)
AMIN = 1e-10  # power floor of spectral_flatness and power_to_db
# Floored powers are multiplied 16 at a time (>= 1e-160, no underflow) before a log
# is taken, and the running product is logged only once it leaves [1e-100, 1e100].
GROUP = 16
_PRODUCT_LOW = 1e-100
_PRODUCT_HIGH = 1e100

_Kernel = TypeVar("_Kernel", bound=Callable[..., Any])
_REASSOC = {"reassoc"}


def _jit(
    signature: Any = None, *, fastmath: set[str] | bool = False
) -> Callable[[_Kernel], _Kernel]:
    """``njit(nogil=True)``, cached on disk where numba finds a writable directory.

    With a signature the function is compiled now, for that signature only;
    without one it is a helper, which LLVM inlines into the kernels that call it
    (``forceinline``; its instructions keep its own fast-math flags).
    """

    def decorate(func: _Kernel) -> _Kernel:
        def build(cache: bool) -> object:
            if signature is None:
                return njit(func, cache=cache, nogil=True, fastmath=fastmath, forceinline=True)
            return njit(signature, cache=cache, nogil=True, fastmath=fastmath)(func)

        try:
            jitted = build(cache=True)
        except RuntimeError as error:  # "cannot cache function ...: no locator available"
            if "cannot cache" not in str(error):
                raise
            jitted = build(cache=False)
        return cast(_Kernel, jitted)

    return decorate


def _array(dtype: Any, ndim: int, *, readonly: bool = False, aligned: bool = True) -> Any:
    return types.Array(dtype, ndim, "C", readonly=readonly, aligned=aligned)


# Inputs are declared read-only (a writable array converts to that, not back) and
# the samples also unaligned, so any C-contiguous float32 chunk matches.
_SAMPLES = _array(types.float32, 1, readonly=True, aligned=False)
_CONST_F64 = _array(types.float64, 1, readonly=True)
_CONST_F64_2D = _array(types.float64, 2, readonly=True)
_CONST_INT = _array(types.int64, 1, readonly=True)
_OUT_F32_2D = _array(types.float32, 2)


# -- frames -------------------------------------------------------------------


@_jit(fastmath=_REASSOC)
def _window(frame: Float32, window: Float64, out: Float64) -> float:
    """``out = frame * window`` in double precision; returns ``sum(frame**2)``."""
    total = 0.0
    for j in range(frame.shape[0]):
        sample = np.float64(frame[j])
        out[j] = sample * window[j]
        total += sample * sample
    return total


@_jit()
def _crossings(frame: Float32) -> int:
    """Sign changes between neighbours, samples >= -ZCR_THRESHOLD counting as >= 0."""
    flips = 0
    below = -ZCR_THRESHOLD
    for j in range(1, frame.shape[0]):
        flips += (frame[j] < below) != (frame[j - 1] < below)
    return flips


@_jit(types.void(_SAMPLES, types.intp, _CONST_F64, _array(types.float64, 2), _OUT_F32_2D))
def frames(x: Float32, hop: int, window: Float64, out: Float64, scalars: Float32) -> None:
    """Windowed frames of ``x`` into ``out`` (n, n_fft); rms, zcr into rows 0, 1 of ``scalars``.

    ``x`` holds exactly the ``n`` frames: ``(n - 1) * hop + n_fft`` samples.
    """
    n, n_fft = out.shape
    for i in range(n):
        frame = x[i * hop : i * hop + n_fft]
        scalars[0, i] = math.sqrt(_window(frame, window, out[i]) / n_fft)
        scalars[1, i] = _crossings(frame) / n_fft


# -- spectra ------------------------------------------------------------------


@_jit(fastmath=_REASSOC)
def _powers(
    spectrum: Complex128, freqs: Float64, power: Float64, mag: Float64
) -> tuple[float, float, float]:
    """Fill ``power`` = |X|**2 and ``mag`` = |X|; return sum(S), sum(f S), sum(max(P, AMIN))."""
    total = 0.0
    first = 0.0
    floored = 0.0
    for k in range(spectrum.shape[0]):
        x = spectrum[k]
        p = x.real * x.real + x.imag * x.imag
        s = math.sqrt(p)
        power[k] = p
        mag[k] = s
        total += s
        first += freqs[k] * s
        floored += max(p, AMIN)
    return total, first, floored


@_jit(fastmath=_REASSOC)
def _spread(mag: Float64, freqs: Float64, centroid: float) -> float:
    """``sum(S * (f - centroid)**2)``, as librosa: no cancellation between moments."""
    total = 0.0
    for k in range(mag.shape[0]):
        d = freqs[k] - centroid
        total += mag[k] * (d * d)
    return total


@_jit(fastmath=_REASSOC)
def _group_sums(mag: Float64, sums: Float64) -> None:
    """``sums[g]``: the total of S over bins ``GROUP * g`` to ``GROUP * (g + 1)``."""
    n_bins = mag.shape[0]
    for g in range(sums.shape[0]):
        total = 0.0
        for k in range(g * GROUP, min(g * GROUP + GROUP, n_bins)):
            total += mag[k]
        sums[g] = total


@_jit(fastmath=_REASSOC)
def _group_products(power: Float64, products: Float64) -> None:
    """``products[g]``: the product of max(P, AMIN) over the bins of group ``g``."""
    n_bins = power.shape[0]
    for g in range(products.shape[0]):
        product = 1.0
        for k in range(g * GROUP, min(g * GROUP + GROUP, n_bins)):
            product *= max(power[k], AMIN)
        products[g] = product


@_jit()
def _log_sum(power: Float64, products: Float64) -> float:
    """``sum(log(max(P, AMIN)))`` from a few logs of products of many bins.

    A group's product of 16 floored powers is >= 1e-160. The running product of
    the groups is logged whenever it leaves [1e-100, 1e100], so it neither
    underflows nor, unless powers exceed about 1e13, overflows; if it does, the
    logs are taken bin by bin.
    """
    _group_products(power, products)
    total = 0.0
    running = 1.0
    for g in range(products.shape[0]):
        running *= products[g]
        if not _PRODUCT_LOW <= running <= _PRODUCT_HIGH:
            total += math.log(running)
            running = 1.0
    total += math.log(running)
    if math.isfinite(total):
        return total
    total = 0.0
    for k in range(power.shape[0]):
        total += math.log(max(power[k], AMIN))
    return total


@_jit()
def _rolloff_bin(mag: Float64, sums: Float64, share: float) -> int:
    """First bin whose running total of S reaches ``share`` of the frame's total.

    The running totals of groups of 16 bins find the group that crosses; only its
    bins are then added one by one. The total is the groups' own sum, so for
    ``share <= 1`` some bin always reaches it; silence stops at bin 0.
    """
    _group_sums(mag, sums)
    n_groups = sums.shape[0]
    total = 0.0
    for g in range(n_groups):
        total += sums[g]
    threshold = share * total
    running = 0.0
    g = 0
    while g < n_groups - 1 and running + sums[g] < threshold:
        running += sums[g]
        g += 1
    k = g * GROUP
    last = mag.shape[0] - 1
    while k < last:
        running += mag[k]
        if running >= threshold:
            break
        k += 1
    return k


@_jit()
def _first_peak(power: Float64) -> int:
    """The first bin >= 1 holding the largest power (never DC)."""
    best = 1
    peak = power[1]
    for k in range(2, power.shape[0]):
        if power[k] > peak:
            peak = power[k]
            best = k
    return best


@_jit(fastmath=_REASSOC)
def _mel_bands(
    power: Float64, first: Int64, offsets: Int64, weights: Float64, out: Float64
) -> None:
    """The mel bank times P: band ``m`` weighs bins ``first[m]`` onwards."""
    for m in range(first.shape[0]):
        w = weights[offsets[m] : offsets[m + 1]]
        p = power[first[m] : first[m] + w.shape[0]]
        band = 0.0
        for j in range(w.shape[0]):
            band += w[j] * p[j]
        out[m] = band


@_jit()
def _cepstrum(log_mel: Float64, dct: Float64, acc: Float64, out: Float32) -> None:
    """``out = dct.T @ log_mel``, ``dct`` being (n_mels, n_mfcc), accumulated in ``acc``.

    Mel band by mel band, so each coefficient is still summed in order, and the
    coefficients' sums vectorise without reassociating any of them.
    """
    acc[:] = 0.0
    for m in range(log_mel.shape[0]):
        v = log_mel[m]
        row = dct[m]
        for c in range(acc.shape[0]):
            acc[c] += row[c] * v
    for c in range(acc.shape[0]):
        out[c] = acc[c]


@_jit(
    types.void(
        _array(types.complex128, 2, readonly=True),
        _CONST_F64,
        _CONST_INT,
        _CONST_INT,
        _CONST_F64,
        _CONST_F64_2D,
        types.float64,
        _OUT_F32_2D,
        _OUT_F32_2D,
        _OUT_F32_2D,
    )
)
def spectral(  # noqa: PLR0917 (a numba kernel takes its arrays positionally)
    spectrum: Complex128,
    freqs: Float64,
    mel_first: Int64,
    mel_offsets: Int64,
    mel_weights: Float64,
    dct: Float64,
    rolloff: float,
    scalars: Float32,
    mel: Float32,
    mfcc: Float32,
) -> None:
    """Spectral features of each row of ``spectrum`` (n, n_bins), rfft of windowed frames.

    Writes rows 2..6 of ``scalars`` (centroid, bandwidth, rolloff, flatness,
    dominant_hz), ``mel`` (n, n_mels) and ``mfcc`` (n, n_mfcc). Band ``m`` of the
    mel bank weighs bins ``mel_first[m]`` onwards by
    ``mel_weights[mel_offsets[m] : mel_offsets[m + 1]]``; ``dct`` (n_mels, n_mfcc)
    maps the natural log of the mel bands to the cepstrum.
    """
    n, n_bins = spectrum.shape
    power = np.empty(n_bins)
    mag = np.empty(n_bins)
    sums = np.empty((n_bins + GROUP - 1) // GROUP)
    products = np.empty_like(sums)
    bands = np.empty(mel_first.shape[0])
    cepstrum = np.empty(dct.shape[1])
    for i in range(n):
        total, first, floored = _powers(spectrum[i], freqs, power, mag)
        # librosa leaves a silent frame's centroid and bandwidth at 0.
        norm = total if total > 0.0 else 1.0
        centroid = first / norm
        scalars[2, i] = centroid
        scalars[3, i] = math.sqrt(_spread(mag, freqs, centroid) / norm)
        scalars[4, i] = freqs[_rolloff_bin(mag, sums, rolloff)]
        scalars[5, i] = math.exp(_log_sum(power, products) / n_bins) / (floored / n_bins)
        scalars[6, i] = freqs[_first_peak(power)]
        _mel_bands(power, mel_first, mel_offsets, mel_weights, bands)
        for m in range(bands.shape[0]):
            mel[i, m] = bands[m]
            bands[m] = math.log(max(bands[m], AMIN))
        _cepstrum(bands, dct, cepstrum, mfcc[i])
