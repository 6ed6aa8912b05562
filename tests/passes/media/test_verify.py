"""``passes.media.verify``: the SSIM matches the paper's formula window by window."""

from __future__ import annotations

import numpy as np
import pytest

from passes.media.verify import ssim
from tests.passes.media.oracles import naive_ssim


def test_ssim_matches_the_formula() -> None:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (23, 31)).astype(np.float64)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255)
    assert ssim(base, base) == pytest.approx(1.0)
    assert ssim(base, noisy, dtype=np.float64) == pytest.approx(naive_ssim(base, noisy), abs=1e-9)
    assert ssim(base, noisy) == pytest.approx(naive_ssim(base, noisy), abs=1e-6)  # float32, centred on 128
    assert ssim(base, noisy) < 0.99
