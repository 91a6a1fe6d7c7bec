"""Framing, shapes, batching, and pickling of soundstream.core.features."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import librosa
import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from soundstream.core.features import (
    SCALARS,
    Extractor,
    Features,
    extract_many,
    extractor_for,
    frame_count,
    warm_up,
)
from soundstream.core.fields import FeatureParams

FIELDS = (*SCALARS, "mel", "mfcc")
ROOT = Path(__file__).parents[2]
# Powers of two, other sizes with small factors, and primes (planned differently).
N_FFTS = (16, 64, 100, 257, 400, 512, 1000, 1021, 1024, 2048)


def noise(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


@st.composite
def feature_params(draw: st.DrawFn) -> FeatureParams:
    n_fft = draw(st.sampled_from(N_FFTS))
    n_mels = draw(st.integers(1, 64))
    return FeatureParams(
        n_fft=n_fft,
        # A floor on hop keeps the frame count, and so the plan's memory, modest.
        hop=draw(st.integers(max(1, n_fft // 8), n_fft)),
        n_mels=n_mels,
        n_mfcc=draw(st.integers(1, n_mels)),
        rolloff=draw(st.floats(0.01, 1.0)),
    )


def assert_same(a: Features, b: Features) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# No deadline: the first example pays for loading parts of librosa.
@settings(deadline=None)
@given(st.integers(0, 20_000), st.integers(16, 4096), st.integers(1, 4096))
def test_frame_count(n_samples: int, n_fft: int, hop: int) -> None:
    n = frame_count(n_samples, n_fft, hop)
    if n_samples < n_fft:
        assert n == 0
    else:
        frames = librosa.util.frame(np.zeros(n_samples), frame_length=n_fft, hop_length=hop)
        assert n == frames.shape[-1]
        assert (n - 1) * hop + n_fft <= n_samples  # the last frame ends inside the chunk
    assert n * hop + n_fft > n_samples  # and no further frame would


# No deadline: a new n_fft is first measured by FFTW, which takes up to 0.2 s.
@settings(deadline=None, max_examples=60)
@given(
    feature_params(),
    st.integers(0, 20_000),
    st.integers(8000, 192_000),
    st.integers(0, 2**32 - 1),
)
def test_shapes_and_dtypes(p: FeatureParams, n_samples: int, sample_rate: int, seed: int) -> None:
    x = noise(n_samples, seed)
    n = frame_count(n_samples, p.n_fft, p.hop)
    # Samples past the last frame are poison: any frame reaching them would turn
    # its features into NaN.
    x[(n - 1) * p.hop + p.n_fft if n else 0 :] = np.nan
    f = extractor_for(p)(x, sample_rate)
    assert len(f) == n
    shapes = {name: (n,) for name in SCALARS} | {"mel": (n, p.n_mels), "mfcc": (n, p.n_mfcc)}
    for name, shape in shapes.items():
        value = getattr(f, name)
        assert value.shape == shape, name
        assert value.dtype == np.float32, name
        assert np.isfinite(value).all(), name


def test_extract_many_equals_one_by_one() -> None:
    p = FeatureParams()
    jobs = [
        (noise(16_000, 1), 16_000),
        (noise(48_000 - 17, 2), 48_000),
        (np.zeros(500, dtype=np.float32), 8000),
        (noise(44_100, 3), 44_100),
        (noise(16_000, 4), 16_000),
    ]
    many = extract_many(p, jobs)
    assert len(many) == len(jobs)
    extract = extractor_for(p)
    for features, (samples, sample_rate) in zip(many, jobs, strict=True):
        assert_same(features, extract(samples, sample_rate))


def test_pickle_round_trip() -> None:
    p = FeatureParams(n_fft=512, hop=256)
    jobs = [(noise(8000, 5), 8000), (noise(100, 6), 8000)]
    assert pickle.loads(pickle.dumps(extract_many)) is extract_many
    sent_p, sent_jobs = pickle.loads(pickle.dumps((p, jobs)))
    returned = pickle.loads(pickle.dumps(extract_many(sent_p, sent_jobs)))
    for got, want in zip(returned, extract_many(p, jobs), strict=True):
        assert isinstance(got, Features)
        assert_same(got, want)


def test_spawned_pool() -> None:
    p = FeatureParams()
    jobs = [(noise(16_000, 7), 16_000), (noise(3000, 8), 48_000)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=warm_up, initargs=(p,)) as pool:
        remote = pool.submit(extract_many, p, jobs).result(timeout=60)
    # The worker measured its own FFTW plans, which may round differently.
    for got, want in zip(remote, extract_many(p, jobs), strict=True):
        for name in FIELDS:
            np.testing.assert_allclose(
                getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6, err_msg=name
            )


def test_plan_cache_is_bounded() -> None:
    extract = Extractor(FeatureParams(n_fft=64, hop=64))
    for n_frames in range(1, 20):
        extract(noise(64 * n_frames), 8000)
    assert 1 <= len(extract._plans) <= 8
    assert next(reversed(extract._plans)) == 19


def test_any_sample_layout_runs_the_compiled_kernels() -> None:
    # Read-only, unaligned, byte-swapped, strided or float64 samples all reach the
    # kernels as the one signature they were compiled for: none compiles anew.
    from soundstream.core import kernels

    p = FeatureParams()
    extract = extractor_for(p)
    x = noise(16_000, 10)
    want = extract(x, 16_000)
    readonly = x.copy()
    readonly.flags.writeable = False
    unaligned = np.frombuffer(b"\0" + x.tobytes(), dtype=np.float32, offset=1)
    assert not unaligned.flags.aligned
    strided = np.repeat(x, 2)[::2]
    for samples in (readonly, unaligned, x.astype(">f4"), strided, x.astype(np.float64)):
        assert_same(extract(samples, 16_000), want)
    assert len(kernels.frames.signatures) == 1
    assert len(kernels.spectral.signatures) == 1


def _python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout


def test_importing_features_leaves_numba_out() -> None:
    # The main process imports this module for the pool's task functions only.
    code = "import sys, soundstream.core.features; print('numba' in sys.modules)"
    assert _python(code).split() == ["False"]


def test_kernels_compile_where_numba_cannot_cache(tmp_path: Path) -> None:
    # No cache locator at all is what numba finds when neither NUMBA_CACHE_DIR, the
    # package's __pycache__ nor the user's cache directory is writable.
    p = FeatureParams()
    x = noise(16_000, 11)
    np.save(tmp_path / "x.npy", x)
    code = f"""
import numpy as np
from numba.core import caching
(getattr(caching, 'CacheImpl', None) or caching._CacheImpl)._locator_classes = []
from soundstream.core import features, kernels
from soundstream.core.fields import FeatureParams
print(type(kernels.spectral._cache).__name__)
f = features.extractor_for(FeatureParams())(np.load({str(tmp_path / "x.npy")!r}), 16000)
np.savez({str(tmp_path / "f.npz")!r}, **{{name: getattr(f, name) for name in {FIELDS!r}}})
"""
    assert _python(code).split() == ["NullCache"]
    got = np.load(tmp_path / "f.npz")
    want = extractor_for(p)(x, 16_000)
    # Another process measured its own FFTW plans, which may round differently.
    for name in FIELDS:
        np.testing.assert_allclose(
            got[name], getattr(want, name), rtol=1e-5, atol=1e-6, err_msg=name
        )
