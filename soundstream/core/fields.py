"""What a frame's features are called and shaped, and the parameters that size them.

The smallest leaf of the package (numpy and the standard library only), so that the
API role can name, validate and lay out fields without importing FFTW.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

SCALARS: tuple[str, ...] = (
    "rms",
    "zcr",
    "centroid",
    "bandwidth",
    "rolloff",
    "flatness",
    "dominant_hz",
)

ARRAY_FIELDS: tuple[str, ...] = ("mel", "mfcc")
FEATURE_FIELDS: tuple[str, ...] = SCALARS + ARRAY_FIELDS


@dataclass(frozen=True)
class FeatureParams:
    """What the extractor needs: the four frame/feature sizes and the rolloff share."""

    n_fft: int = 1024
    hop: int = 512
    n_mels: int = 32
    n_mfcc: int = 13
    rolloff: float = 0.85


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
