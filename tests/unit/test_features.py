"""Features against librosa, the reference named in DESIGN.md section 4.

Every field must agree to a relative 1e-3 (mfcc: absolute 1e-3). ``rolloff`` and
``dominant_hz`` pick a bin, so where ours and librosa's differ the test demands a
genuine near-tie in librosa's own numbers rather than a looser tolerance.
"""

from __future__ import annotations

import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import numpy.typing as npt
import pytest

from soundstream.core.features import extractor_for
from soundstream.core.fields import FeatureParams, Features

Samples = npt.NDArray[np.float32]
Floats = npt.NDArray[np.floating]

SPEECH = Path(__file__).parents[1] / "data" / "speech_16k.wav"
RATES = (8000, 16000, 44100, 48000)
SIZES = ((512, 256), (1024, 512), (2048, 512), (256, 256))
RTOL = 1e-3
MFCC_ATOL = 1e-3
# Only silence has a reference of exactly 0 Hz here; anything else is tens of Hz.
HZ_ATOL = 1e-6
# Two bins are a near-tie when librosa's float32 numbers for them differ by less
# than this share: float32 rounding alone can then decide which bin wins.
NEAR_TIE = 1e-5


@dataclass(frozen=True)
class Reference:
    spec: Floats  # librosa's |STFT|, (bins, frames)
    freqs: Floats
    fields: dict[str, Floats]  # (frames,) or (frames, bands), like Features


def reference(x: Samples, sample_rate: int, p: FeatureParams) -> Reference:
    sr, n_fft, hop = sample_rate, p.n_fft, p.hop
    # One |STFT| for every spectral feature; given S, librosa needs sr and n_fft
    # for the bin frequencies.
    spec = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop, center=False, window="hann"))
    mel = librosa.feature.melspectrogram(S=spec**2, sr=sr, n_fft=n_fft, n_mels=p.n_mels)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=None), n_mfcc=p.n_mfcc)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    feature = librosa.feature
    fields = {
        "rms": feature.rms(y=x, frame_length=n_fft, hop_length=hop, center=False)[0],
        "zcr": feature.zero_crossing_rate(x, frame_length=n_fft, hop_length=hop, center=False)[0],
        "centroid": feature.spectral_centroid(S=spec, sr=sr, n_fft=n_fft)[0],
        "bandwidth": feature.spectral_bandwidth(S=spec, sr=sr, n_fft=n_fft)[0],
        "rolloff": feature.spectral_rolloff(S=spec, sr=sr, n_fft=n_fft, roll_percent=p.rolloff)[0],
        "flatness": feature.spectral_flatness(S=spec)[0],
        "dominant_hz": freqs[1 + np.argmax(spec[1:], axis=0)],
        "mel": mel.T,
        "mfcc": mfcc.T,
    }
    return Reference(spec, freqs, fields)


def bins_of(hz: Floats, sample_rate: int, n_fft: int) -> npt.NDArray[np.intp]:
    return np.rint(np.asarray(hz, dtype=np.float64) * n_fft / sample_rate).astype(np.intp)


def assert_matches(ours: Features, ref: Reference, sample_rate: int, p: FeatureParams) -> None:
    want = ref.fields
    assert len(ours) == len(want["rms"])
    for name in ("rms", "zcr", "flatness"):
        np.testing.assert_allclose(getattr(ours, name), want[name], rtol=RTOL, err_msg=name)
    for name in ("centroid", "bandwidth"):
        np.testing.assert_allclose(
            getattr(ours, name), want[name], rtol=RTOL, atol=HZ_ATOL, err_msg=name
        )
    # Bands the signal does not reach hold only the FFT's rounding, some 1e-30 of
    # the loudest band in double precision; they are not comparable and float32
    # could not tell them from 0 anyway.
    mel_atol = 1e-7 * float(want["mel"].max(initial=0.0))
    np.testing.assert_allclose(ours.mel, want["mel"], rtol=RTOL, atol=mel_atol, err_msg="mel")
    np.testing.assert_allclose(ours.mfcc, want["mfcc"], rtol=0, atol=MFCC_ATOL, err_msg="mfcc")
    assert_same_bins(ours, ref, sample_rate, p)


def assert_same_bins(ours: Features, ref: Reference, sample_rate: int, p: FeatureParams) -> None:
    for name in ("rolloff", "dominant_hz"):
        got = getattr(ours, name)
        # Every value is a bin frequency, up to float32 rounding.
        np.testing.assert_allclose(got, ref.freqs[bins_of(got, sample_rate, p.n_fft)], rtol=1e-6)

    # rolloff: librosa's own running total must sit at its threshold across every
    # bin between the two choices.
    running = np.cumsum(ref.spec, axis=0)
    threshold = p.rolloff * running[-1]
    ours_k = bins_of(ours.rolloff, sample_rate, p.n_fft)
    ref_k = bins_of(ref.fields["rolloff"], sample_rate, p.n_fft)
    for t in np.flatnonzero(ours_k != ref_k):
        lo, hi = sorted((ours_k[t], ref_k[t]))
        gap = np.abs(running[lo:hi, t] - threshold[t])
        assert np.all(gap <= NEAR_TIE * threshold[t]), (
            f"rolloff frame {t}: bin {ours_k[t]} vs librosa {ref_k[t]}, "
            f"running total off its threshold by {gap.max() / threshold[t]:.2e}"
        )

    # dominant_hz: the two bins' magnitudes must be all but equal.
    ours_k = bins_of(ours.dominant_hz, sample_rate, p.n_fft)
    ref_k = bins_of(ref.fields["dominant_hz"], sample_rate, p.n_fft)
    for t in np.flatnonzero(ours_k != ref_k):
        peak, other = ref.spec[ref_k[t], t], ref.spec[ours_k[t], t]
        assert ours_k[t] >= 1
        assert peak - other <= NEAR_TIE * peak, (
            f"dominant_hz frame {t}: bin {ours_k[t]} vs librosa {ref_k[t]}, "
            f"magnitudes {other} vs {peak}"
        )


def tone(hz: float, amplitude: float = 0.5) -> Callable[[int, int, int], Samples]:
    def make(n: int, sample_rate: int, n_fft: int) -> Samples:
        t = np.arange(n) / sample_rate
        return (amplitude * np.sin(2 * np.pi * hz * t + 0.3)).astype(np.float32)

    return make


def tone_on_bin(n: int, sample_rate: int, n_fft: int) -> Samples:
    # sample_rate / 8 falls on bin n_fft / 8 for every size tested.
    return tone(sample_rate / 8)(n, sample_rate, n_fft)


def near_nyquist(n: int, sample_rate: int, n_fft: int) -> Samples:
    return tone(0.41 * sample_rate, amplitude=0.99)(n, sample_rate, n_fft)


def chord(n: int, sample_rate: int, n_fft: int) -> Samples:
    return tone(261.63, 0.3)(n, sample_rate, n_fft) + tone(1318.5, 0.2)(n, sample_rate, n_fft)


def noise(n: int, sample_rate: int, n_fft: int) -> Samples:
    return (0.1 * np.random.default_rng(n + sample_rate).standard_normal(n)).astype(np.float32)


def near_zero(n: int, sample_rate: int, n_fft: int) -> Samples:
    # About half the samples fall at or below zero_crossing_rate's 1e-10 threshold.
    return (1e-10 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)


def silence(n: int, sample_rate: int, n_fft: int) -> Samples:
    return np.zeros(n, dtype=np.float32)


def click(n: int, sample_rate: int, n_fft: int) -> Samples:
    x = np.zeros(n, dtype=np.float32)
    x[n // 3] = 1.0
    return x


SIGNALS: dict[str, Callable[[int, int, int], Samples]] = {
    "tone_on_bin": tone_on_bin,
    "tone_between_bins": tone(440.0),
    "low_tone": tone(50.0, amplitude=0.9),
    "near_nyquist": near_nyquist,
    "chord": chord,
    "noise": noise,
    "near_zero": near_zero,
    "silence": silence,
    "click": click,
}


def speech() -> tuple[Samples, int]:
    with wave.open(str(SPEECH), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return (pcm / 32768.0).astype(np.float32), w.getframerate()


@pytest.mark.parametrize(("n_fft", "hop"), SIZES)
@pytest.mark.parametrize("sample_rate", RATES)
@pytest.mark.parametrize("signal", SIGNALS)
def test_matches_librosa(signal: str, sample_rate: int, n_fft: int, hop: int) -> None:
    p = FeatureParams(n_fft=n_fft, hop=hop)
    # Half a second plus a remainder, so the last partial frame is dropped.
    x = SIGNALS[signal](sample_rate // 2 + 123, sample_rate, n_fft)
    assert_matches(extractor_for(p)(x, sample_rate), reference(x, sample_rate, p), sample_rate, p)


@pytest.mark.parametrize(("n_fft", "hop"), SIZES)
def test_speech_matches_librosa(n_fft: int, hop: int) -> None:
    x, sample_rate = speech()
    assert sample_rate == 16000
    p = FeatureParams(n_fft=n_fft, hop=hop)
    assert_matches(extractor_for(p)(x, sample_rate), reference(x, sample_rate, p), sample_rate, p)


@pytest.mark.parametrize(
    "p",
    [
        FeatureParams(n_mels=64, n_mfcc=20, rolloff=0.5),
        FeatureParams(n_fft=400, hop=160, n_mels=40, n_mfcc=40, rolloff=0.95),
        FeatureParams(n_fft=1000, hop=1000, n_mels=16, n_mfcc=1, rolloff=0.1),
    ],
    ids=str,
)
@pytest.mark.parametrize("signal", ["speech", "noise", "chord"])
def test_other_params_match_librosa(p: FeatureParams, signal: str) -> None:
    if signal == "speech":
        x, sample_rate = speech()
    else:
        sample_rate = 22050
        x = SIGNALS[signal](sample_rate, sample_rate, p.n_fft)
    assert_matches(extractor_for(p)(x, sample_rate), reference(x, sample_rate, p), sample_rate, p)


@pytest.mark.parametrize("n", [1024, 1024 + 511, 1024 + 512])
def test_chunk_edges_match_librosa(n: int) -> None:
    p = FeatureParams()
    x = noise(n, 16000, p.n_fft)
    assert_matches(extractor_for(p)(x, 16000), reference(x, 16000, p), 16000, p)


@pytest.mark.parametrize("gain", [1e4, 1e10])
def test_loud_chunks_match_librosa(gain: float) -> None:
    # Powers near 1e8, then near 1e20: flatness multiplies floored powers before
    # taking logs, and takes them bin by bin where such products would overflow.
    p = FeatureParams()
    x = (gain * noise(16000, 16000, p.n_fft)).astype(np.float32)
    assert_matches(extractor_for(p)(x, 16000), reference(x, 16000, p), 16000, p)


def test_silence_is_quiet() -> None:
    f = extractor_for(FeatureParams())(np.zeros(4096, dtype=np.float32), 16000)
    for name in ("rms", "zcr", "centroid", "bandwidth", "rolloff"):
        assert not getattr(f, name).any(), name
    np.testing.assert_array_equal(f.flatness, 1.0)
    np.testing.assert_array_equal(f.mel, 0.0)
    # The DC bin is never dominant, not even when every bin is equally empty.
    np.testing.assert_array_equal(f.dominant_hz, 16000 / 1024)


def test_short_chunk_has_no_frames() -> None:
    p = FeatureParams(n_mels=20, n_mfcc=7)
    f = extractor_for(p)(np.ones(p.n_fft - 1, dtype=np.float32), 8000)
    assert len(f) == 0
    assert f.mel.shape == (0, 20)
    assert f.mfcc.shape == (0, 7)


def test_rejects_bad_input() -> None:
    extract = extractor_for(FeatureParams())
    with pytest.raises(ValueError, match="one-dimensional"):
        extract(np.zeros((2, 2048), dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        extract(np.zeros(2048, dtype=np.float32), 0)
