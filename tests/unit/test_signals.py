from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from soundstream.sim.signals import RATES, STEREO_EVERY, SensorSignal


def test_same_index_same_signal() -> None:
    a, b = SensorSignal.for_sensor(7), SensorSignal.for_sensor(7)
    assert a == b
    np.testing.assert_array_equal(a.samples(12345, 4000), b.samples(12345, 4000))


def test_sensors_differ() -> None:
    # Indices 0 and 5 share a sample rate, so only their tones tell them apart.
    a, b = SensorSignal.for_sensor(0), SensorSignal.for_sensor(len(RATES))
    assert a.sample_rate == b.sample_rate
    assert a.tones != b.tones
    assert not np.allclose(a.samples(0, 4000), b.samples(0, 4000), atol=0.01)


def test_rates_and_channels_cycle() -> None:
    signals = [SensorSignal.for_sensor(i) for i in range(2 * STEREO_EVERY)]
    assert {s.sample_rate for s in signals} == set(RATES)
    assert [s.channels for s in signals] == [1, 1, 1, 2, 1, 1, 1, 2]


@pytest.mark.parametrize("index", range(12))
def test_in_range_and_shaped(index: int) -> None:
    signal = SensorSignal.for_sensor(index)
    x = signal.samples(0, signal.sample_rate)  # one second
    assert x.dtype == np.float32
    assert x.shape == ((signal.sample_rate,) if signal.channels == 1 else (signal.sample_rate, 2))
    assert np.isfinite(x).all()
    assert np.abs(x).max() <= 1.0
    assert np.abs(x).max() > 0.1  # not silence


@pytest.mark.parametrize("index", [1, 3])
def test_chunks_join_seamlessly(index: int) -> None:
    signal = SensorSignal.for_sensor(index)
    size = 441
    whole = signal.samples(0, 10 * size)
    joined = np.concatenate([signal.chunk(k, size) for k in range(10)])
    # Vectorised sin may round the last ulp differently by position in the array.
    np.testing.assert_allclose(joined, whole, rtol=0, atol=1e-6)
    # Cut differently, the same stretch of stream comes out again.
    np.testing.assert_allclose(signal.chunk(3, 1000), whole[3000:4000], rtol=0, atol=1e-6)


def test_tone_phase_has_no_step_at_boundaries() -> None:
    # Without noise the signal is smooth: no step across a chunk boundary is larger
    # than the largest step inside a chunk.
    signal = SensorSignal.for_sensor(2)
    quiet = dataclasses.replace(signal, noise=0.0)
    size = 1000
    chunks = [quiet.chunk(k, size).astype(np.float64) for k in range(5)]
    inside = max(np.abs(np.diff(c)).max() for c in chunks)
    across = max(abs(chunks[k + 1][0] - chunks[k][-1]) for k in range(4))
    assert across <= inside * 1.01


def test_stereo_channels_differ_but_match_in_time() -> None:
    signal = SensorSignal.for_sensor(STEREO_EVERY - 1)
    x = signal.samples(0, 8000)
    left, right = x[:, 0], x[:, 1]
    assert not np.allclose(left, right, atol=0.01)
    assert np.corrcoef(left, right)[0, 1] > 0.5  # the same tones, panned


def test_spectrum_peaks_at_a_tone() -> None:
    signal = SensorSignal.for_sensor(4)
    x = signal.samples(0, signal.sample_rate).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peak_hz = np.argmax(spectrum[1:]) + 1  # one-second window: bin k is k Hz
    assert any(abs(peak_hz - t.hz) <= signal.glide_depth * t.hz + 2 for t in signal.tones)


def test_noise_is_centred_and_bounded() -> None:
    signal = SensorSignal.for_sensor(0)
    silent = SensorSignal(0, signal.sample_rate, 1, (), noise=1.0)
    x = silent.samples(10**9, 100_000).astype(np.float64)
    assert np.abs(x).max() < 1.0
    assert abs(x.mean()) < 0.01
    assert 0.35 < x.std() < 0.45  # triangular on (-1, 1): std 1/sqrt(6) = 0.408
