"""Per-chunk feature extraction against librosa as users call it, on one core.

    .venv/bin/python bench/extract.py [--repeats 7] [--chunks 8] [--cpu 0] [--rates 16000,48000]

For each rate, ``--chunks`` distinct 1 s float32 chunks (a few tones plus noise,
fixed seed) are extracted ``--repeats`` times over, the two sides taking turns one
pass over the chunks at a time, by

- ours: ``soundstream.features.extract_many(params, [(chunk, rate)])``, as the pool
  worker calls it, after ``warm_up`` and one untimed pass (kernels compiled or
  loaded from numba's cache, plans built, banks cached);
- librosa: one librosa call per feature with ``center=False``, each computing its
  own STFT as a user of librosa would (rms, zero_crossing_rate, spectral_centroid,
  spectral_bandwidth, spectral_rolloff, spectral_flatness, an argmax over
  ``|stft|`` for dominant_hz, melspectrogram and mfcc on
  ``power_to_db(mel, top_db=None)``), after one untimed pass (numba compiled).

The process pins itself to one CPU and sets OPENBLAS/OMP/MKL threads to 1 before
numpy is imported (re-executing itself if it has to), so the figures are those of
one pool worker. Prints min and median ms per chunk, the ratio librosa/ours of
each, and the worst disagreement with librosa on the bench chunks (relative,
absolute for mfcc; bin features as the share of frames on another bin), and
writes it all to ``bench/results/extract-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _pin(cpu: int) -> None:
    """One core, one BLAS thread: must run before numpy is first imported."""
    if any(os.environ.get(v) != "1" for v in THREAD_VARS):
        if "numpy" in sys.modules:
            for v in THREAD_VARS:
                os.environ[v] = "1"
            os.execv(sys.executable, [sys.executable, *sys.argv])
        for v in THREAD_VARS:
            os.environ[v] = "1"
    os.sched_setaffinity(0, {cpu})


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--rates", default="16000,48000")
    parser.add_argument("--no-librosa", action="store_true", help="time ours only")
    return parser.parse_args()


ARGS = _args()
_pin(ARGS.cpu)

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from soundstream.core import features  # noqa: E402
from soundstream.core.features import extract_many, warm_up  # noqa: E402
from soundstream.core.fields import (  # noqa: E402
    SCALARS,
    FeatureParams,
    Features,
)

RESULTS = Path(__file__).parent / "results"
KERNELS = Path(features.__file__).with_name("kernels.py")
Samples = npt.NDArray[np.float32]


def chunks(sample_rate: int, count: int, seed: int = 20261122) -> list[Samples]:
    """1 s chunks: three tones at random frequencies and levels, plus noise."""
    rng = np.random.default_rng(seed + sample_rate)
    t = np.arange(sample_rate) / sample_rate
    out = []
    for _ in range(count):
        x = 0.05 * rng.standard_normal(sample_rate)
        for hz, amp in zip(
            rng.uniform(50, 0.45 * sample_rate, 3), rng.uniform(0.05, 0.3, 3), strict=True
        ):
            x += amp * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))
        out.append(x.astype(np.float32))
    return out


def librosa_features(y: Samples, sr: int, p: FeatureParams) -> dict[str, Any]:
    import librosa

    n_fft, hop = p.n_fft, p.hop
    common: dict[str, Any] = {"n_fft": n_fft, "hop_length": hop, "center": False}
    feature = librosa.feature
    mel = feature.melspectrogram(y=y, sr=sr, n_mels=p.n_mels, **common)
    spec = np.abs(librosa.stft(y, **common))
    return {
        "rms": feature.rms(y=y, frame_length=n_fft, hop_length=hop, center=False)[0],
        "zcr": feature.zero_crossing_rate(y, frame_length=n_fft, hop_length=hop, center=False)[0],
        "centroid": feature.spectral_centroid(y=y, sr=sr, **common)[0],
        "bandwidth": feature.spectral_bandwidth(y=y, sr=sr, **common)[0],
        "rolloff": feature.spectral_rolloff(y=y, sr=sr, roll_percent=p.rolloff, **common)[0],
        "flatness": feature.spectral_flatness(y=y, **common)[0],
        "dominant_hz": librosa.fft_frequencies(sr=sr, n_fft=n_fft)[1 + np.argmax(spec[1:], axis=0)],
        "mel": mel,
        "mfcc": feature.mfcc(S=librosa.power_to_db(mel, top_db=None), n_mfcc=p.n_mfcc),
    }


def time_calls(
    calls: dict[str, Callable[[Samples], object]], xs: list[Samples], repeats: int
) -> dict[str, list[float]]:
    """ms per call of each of ``calls``, taking turns one pass over ``xs`` at a time.

    Taking turns keeps the ratio honest on a shared machine (a burst of load from
    elsewhere slows both sides alike), while each pass runs back to back with warm
    caches, as a pool worker does; interleaving chunk by chunk would let librosa
    evict our buffers and FFTW's plan before every call.
    """
    for call in calls.values():
        call(xs[0])
    ms: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            for x in xs:
                start = time.perf_counter()
                call(x)
                ms[name].append((time.perf_counter() - start) * 1e3)
    return ms


def worst_errors(ours: Features, ref: dict[str, Any]) -> dict[str, float]:
    """Worst disagreement per field, in the units tests/unit/test_features.py checks."""
    errors: dict[str, float] = {}
    for name in (*SCALARS, "mel", "mfcc"):
        got = np.asarray(getattr(ours, name), dtype=np.float64)
        want = np.asarray(ref[name], dtype=np.float64)
        if name in ("mel", "mfcc"):
            want = want.T
        if name == "mfcc":
            errors[name] = float(np.abs(got - want).max())
        elif name in ("rolloff", "dominant_hz"):
            errors[name + "_other_bin_share"] = float(np.mean(got != want.astype(np.float32)))
        else:
            scale = np.abs(want)
            if name == "mel":
                scale = np.maximum(scale, 1e-4 * want.max())  # as the test's mel atol, roughly
            errors[name] = float((np.abs(got - want) / np.maximum(scale, 1e-30)).max())
    return errors


def blas_summary() -> dict[str, Any]:
    info: dict[str, Any] = {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        config = np.show_config(mode="dicts")
        deps = config.get("Build Dependencies", {})
        info["numpy_build"] = {k: deps.get(k, {}).get("name") for k in ("blas", "lapack")}
        info["simd"] = config.get("SIMD Extensions", {})
    except (TypeError, AttributeError):
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: pool.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for pool in threadpool_info()
        ]
    except ImportError:
        pass
    return info


def summarise(ms: list[float]) -> dict[str, float]:
    return {"min_ms": min(ms), "median_ms": statistics.median(ms)}


def main() -> None:
    params = FeatureParams()
    warm_up(params)
    rates = [int(r) for r in ARGS.rates.split(",")]
    blas = blas_summary()
    print(
        f"cpu {sorted(os.sched_getaffinity(0))}, python {platform.python_version()}, "
        f"numpy {np.__version__}, {params}"
    )
    print(f"blas {json.dumps(blas, default=str)}")
    rows = []
    for rate in rates:
        xs = chunks(rate, ARGS.chunks)
        calls: dict[str, Callable[[Samples], object]] = {
            "ours": lambda x, r=rate: extract_many(params, [(x, r)])
        }
        if not ARGS.no_librosa:
            calls["librosa"] = lambda x, r=rate: librosa_features(x, r, params)
        with warnings.catch_warnings():
            # librosa's numba and audioread imports warn on new Pythons.
            warnings.simplefilter("ignore")
            ms = time_calls(calls, xs, ARGS.repeats)
            row: dict[str, Any] = {"rate": rate, **{k: summarise(v) for k, v in ms.items()}}
            if not ARGS.no_librosa:
                errors = [
                    worst_errors(
                        extract_many(params, [(x, rate)])[0], librosa_features(x, rate, params)
                    )
                    for x in xs
                ]
                row["ratio_min"] = row["librosa"]["min_ms"] / row["ours"]["min_ms"]
                row["ratio_median"] = row["librosa"]["median_ms"] / row["ours"]["median_ms"]
                row["worst_error"] = {k: max(e[k] for e in errors) for k in errors[0]}
        rows.append(row)

    print(
        f"\n{'rate':>6} {'ours min':>9} {'ours med':>9} {'librosa min':>12} "
        f"{'librosa med':>12} {'x min':>6} {'x med':>6}   (ms per 1 s chunk)"
    )
    for row in rows:
        ours = row["ours"]
        line = f"{row['rate']:>6} {ours['min_ms']:>9.3f} {ours['median_ms']:>9.3f}"
        if "librosa" in row:
            ref = row["librosa"]
            line += (
                f" {ref['min_ms']:>12.3f} {ref['median_ms']:>12.3f}"
                f" {row['ratio_min']:>6.2f} {row['ratio_median']:>6.2f}"
            )
        print(line)
    for row in rows:
        if "worst_error" in row:
            worst = ", ".join(f"{k} {v:.2e}" for k, v in row["worst_error"].items())
            print(f"worst vs librosa at {row['rate']}: {worst}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"extract-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "time": stamp,
                "args": vars(ARGS),
                "params": dataclasses.asdict(params),
                "python": platform.python_version(),
                "numpy": np.__version__,
                "machine": platform.processor() or platform.machine(),
                "blas": blas,
                # Which extractor was measured: a run against another checkout
                # (PYTHONPATH) says so here.
                "features_py": features.__file__,
                "features_sha1": hashlib.sha1(Path(features.__file__).read_bytes()).hexdigest(),
                # The arithmetic itself lives in the numba kernels next to it.
                "kernels_sha1": hashlib.sha1(KERNELS.read_bytes()).hexdigest(),
                "numba": importlib.metadata.version("numba"),
                "rows": rows,
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
