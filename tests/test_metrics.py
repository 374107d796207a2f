"""Closed-form checks of the tail-exponent fit and the Fisher-Rao distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spinal.metrics import fisher_rao, spectrum_from_gram, tail_exponent
from spinal.settings import FitSettings, SettingsError


def planted_spectrum(exponent: float, size: int = 400, scale: float = 3.0) -> np.ndarray:
    ranks = np.arange(1, size + 1, dtype=np.float64)
    return scale * ranks**-exponent


@pytest.mark.parametrize("exponent", [0.3, 0.8, 1.5, 2.5])
def test_tail_exponent_planted_power_law(exponent):
    fit = tail_exponent(planted_spectrum(exponent))

    assert fit.status == "ok"
    assert fit.alpha == pytest.approx(exponent, rel=0.01)


@pytest.mark.parametrize("exponent", [0.5, 1.2])
def test_tail_exponent_ignores_leading_outliers(exponent):
    sigma = planted_spectrum(exponent)
    sigma[:4] *= 50.0

    fit = tail_exponent(sigma)

    assert fit.status == "ok"
    assert fit.alpha == pytest.approx(exponent, rel=0.01)


def test_tail_exponent_order_does_not_matter():
    sigma = planted_spectrum(1.0)
    shuffled = np.random.default_rng(0).permutation(sigma)

    assert tail_exponent(shuffled).alpha == pytest.approx(tail_exponent(sigma).alpha)


def test_tail_exponent_window_follows_settings():
    fit = tail_exponent(planted_spectrum(1.0, size=200), drop_top=0.1, fit_until=0.5)

    assert fit.k_min == 21
    assert fit.k_max == 100
    assert fit.n_points == 80


def test_tail_exponent_too_few_values():
    fit = tail_exponent([3.0, 2.0, 1.0])

    assert fit.status == "too_few"
    assert math.isnan(fit.alpha)


def test_tail_exponent_floor_shrinks_rank():
    sigma = np.concatenate([planted_spectrum(1.0, size=20), np.zeros(200)])

    fit = tail_exponent(sigma)

    assert fit.rank == 20
    assert fit.status == "ok"


def test_tail_exponent_all_zero_is_degenerate():
    fit = tail_exponent(np.zeros(50))

    assert fit.status == "degenerate"
    assert math.isnan(fit.alpha)


def test_tail_exponent_flat_spectrum_is_degenerate():
    fit = tail_exponent(np.ones(100))

    assert fit.status == "degenerate"


def test_tail_exponent_nan_is_non_finite():
    sigma = planted_spectrum(1.0)
    sigma[10] = np.nan

    fit = tail_exponent(sigma)

    assert fit.status == "non_finite"
    assert math.isnan(fit.alpha)


def test_tail_exponent_noisy_fit_warns():
    ranks = np.arange(1, 401)
    sigma = np.where(ranks <= 100, 1.0, 0.01) * ranks**-0.1

    fit = tail_exponent(sigma)

    assert fit.status == "ok"
    assert "Poor power-law fit" in fit.warning


def test_tail_exponent_accepts_torch_tensor():
    sigma = torch.tensor(planted_spectrum(1.0))

    assert tail_exponent(sigma).alpha == pytest.approx(1.0, rel=0.01)


def test_tail_exponent_rejects_empty_window_settings():
    with pytest.raises(SettingsError, match="fit_until"):
        tail_exponent(planted_spectrum(1.0), FitSettings(drop_top=0.5, fit_until=0.4))


def random_log_probs(shape, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=generator, dtype=torch.float64) * 2.0
    return torch.log_softmax(logits, dim=-1).to(dtype)


def reference_fisher_rao(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    p = log_p.double().exp()
    q = log_q.double().exp()
    bc = (p * q).sqrt().sum(-1).clamp(0.0, 1.0)
    return 2.0 * torch.arccos(bc)


def test_fisher_rao_identical_is_zero():
    log_p = random_log_probs((5, 300))

    distance = fisher_rao(log_p, log_p)

    assert torch.all(distance.abs() < 1e-6)


def test_fisher_rao_disjoint_support_is_pi():
    log_p = torch.log(torch.tensor([0.5, 0.5, 0.0, 0.0]))
    log_q = torch.log(torch.tensor([0.0, 0.0, 0.3, 0.7]))

    assert fisher_rao(log_p, log_q).item() == pytest.approx(math.pi, abs=1e-6)


def test_fisher_rao_is_symmetric():
    log_p = random_log_probs((8, 500), seed=1)
    log_q = random_log_probs((8, 500), seed=2)

    assert torch.allclose(fisher_rao(log_p, log_q), fisher_rao(log_q, log_p))


def test_fisher_rao_triangle_inequality():
    log_p = random_log_probs((200, 50), seed=3)
    log_q = random_log_probs((200, 50), seed=4)
    log_r = random_log_probs((200, 50), seed=5)

    direct = fisher_rao(log_p, log_r).double()
    detour = fisher_rao(log_p, log_q).double() + fisher_rao(log_q, log_r).double()

    assert torch.all(direct <= detour + 1e-6)


def test_fisher_rao_matches_float64_reference():
    log_p = random_log_probs((64, 1000), seed=6)
    log_q = random_log_probs((64, 1000), seed=7)

    distance = fisher_rao(log_p, log_q).double()
    expected = reference_fisher_rao(log_p, log_q)

    assert torch.max((distance - expected).abs()).item() < 1e-6


def test_fisher_rao_accurate_near_zero():
    log_p = random_log_probs((16, 2000), seed=8, dtype=torch.float64)
    log_q = torch.log_softmax(log_p + 1e-5 * random_log_probs((16, 2000), seed=9, dtype=torch.float64), -1)

    distance = fisher_rao(log_p.float(), log_q.float()).double()
    expected = fisher_rao(log_p, log_q)

    assert torch.max((distance - expected).abs()).item() < 1e-6
    assert torch.all(distance > 0)


def test_fisher_rao_bounded_by_pi():
    log_p = random_log_probs((100, 30), seed=10)
    log_q = random_log_probs((100, 30), seed=11)

    distance = fisher_rao(log_p * 5, log_q * 5)

    assert torch.all(distance >= 0)
    assert torch.all(distance <= math.pi + 1e-6)


def test_spectrum_from_gram_matches_svd():
    rng = np.random.default_rng(12)
    hidden = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40))

    sigma = spectrum_from_gram(hidden.T @ hidden, hidden.sum(0), 300, center=False)

    assert np.allclose(sigma, np.linalg.svd(hidden, compute_uv=False), rtol=1e-8)


def test_spectrum_from_gram_centers_columns():
    rng = np.random.default_rng(13)
    hidden = rng.normal(size=(300, 40)) + 5.0
    centered = hidden - hidden.mean(0)

    sigma = spectrum_from_gram(hidden.T @ hidden, hidden.sum(0), 300, center=True)

    assert np.allclose(sigma, np.linalg.svd(centered, compute_uv=False), rtol=1e-8)
