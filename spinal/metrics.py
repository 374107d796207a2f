"""The two per-layer metrics: the spectral tail exponent alpha and the Fisher-Rao transport.

Both are pure functions with no model code. ``tail_exponent`` works on numpy arrays and needs
no torch; ``fisher_rao`` and ``spectrum_from_gram`` import torch lazily.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from spinal.settings import FitSettings

if TYPE_CHECKING:
    import torch

FitStatus = Literal["ok", "too_few", "degenerate", "non_finite"]

POOR_FIT_R2 = 0.9
"""A fit with a coefficient of determination below this gets a warning (the status stays ok)."""

ARCSIN_SWITCH_BC = 0.5
"""Above this Bhattacharyya coefficient the distance uses the arcsin form, where arccos loses precision."""


@dataclass(frozen=True)
class TailFit:
    """Result of one tail-exponent fit.

    Attributes:
        alpha: Minus the least-squares slope of log sigma_k against log k over the window;
            NaN unless status is ``ok``.
        status: ``ok``; ``too_few`` when the window contains fewer than ``min_points`` values;
            ``degenerate`` when the spectrum is all zero or flat on a log scale;
            ``non_finite`` when the input contains NaN or infinity.
        warning: Empty, or a sentence on why the number deserves caution.
        k_min: First rank of the window (1-based, inclusive); 0 when there is no window.
        k_max: Last rank of the window (1-based, inclusive); 0 when there is no window.
        n_points: Number of singular values in the window.
        r2: Coefficient of determination of the log-log line; NaN without a fit.
        rank: Number of singular values above the relative floor.
    """

    alpha: float
    status: FitStatus
    warning: str
    k_min: int
    k_max: int
    n_points: int
    r2: float
    rank: int

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict."""
        return asdict(self)


def _failed_fit(status: FitStatus, warning: str, rank: int, k_min: int = 0, k_max: int = 0) -> TailFit:
    n_points = k_max - k_min + 1 if k_max >= k_min > 0 else 0
    return TailFit(math.nan, status, warning, k_min, k_max, n_points, math.nan, rank)


def tail_exponent(singular_values: Any, settings: FitSettings | None = None, **overrides: Any) -> TailFit:
    """Fit the power-law tail exponent of a singular-value spectrum.

    The spectrum is sorted in descending order and values below ``rel_floor`` times the largest
    are dropped; the rest define the rank r. The window runs from rank
    ``floor(drop_top * r) + 1`` to ``floor(fit_until * r)``, and alpha is minus the slope of
    the least-squares line of log sigma_k against log k over it.

    Args:
        singular_values: Singular values, shape (n,), any order; numpy array, list or torch tensor.
        settings: Fit settings; defaults to ``FitSettings()``.
        **overrides: Individual ``FitSettings`` fields that replace those of ``settings``.

    Returns:
        The fit. A failed fit has status other than ``ok`` and alpha NaN, never a number.
    """
    settings = settings or FitSettings()
    if overrides:
        settings = FitSettings(**{**asdict(settings), **overrides})
    settings.validate()

    if hasattr(singular_values, "detach"):
        singular_values = singular_values.detach().cpu().double().numpy()
    sigma = np.asarray(singular_values, dtype=np.float64).ravel()

    if not np.all(np.isfinite(sigma)):
        return _failed_fit("non_finite", "The spectrum contains NaN or infinite values.", rank=0)

    sigma = np.sort(np.abs(sigma))[::-1]
    if sigma.size == 0 or sigma[0] <= 0.0:
        return _failed_fit("degenerate", "All singular values are zero.", rank=0)

    rank = int(np.count_nonzero(sigma > settings.rel_floor * sigma[0]))
    k_min = math.floor(settings.drop_top * rank) + 1
    k_max = math.floor(settings.fit_until * rank)
    n_points = k_max - k_min + 1

    if n_points < settings.min_points:
        return _failed_fit(
            "too_few",
            f"The fit window holds {max(n_points, 0)} singular values (rank {rank}); "
            f"at least {settings.min_points} are needed. Use more tokens or a wider window.",
            rank=rank,
            k_min=k_min if n_points > 0 else 0,
            k_max=k_max if n_points > 0 else 0,
        )

    log_k = np.log(np.arange(k_min, k_max + 1, dtype=np.float64))
    log_sigma = np.log(sigma[k_min - 1 : k_max])

    centered_k = log_k - log_k.mean()
    centered_sigma = log_sigma - log_sigma.mean()
    slope = float(centered_k @ centered_sigma / (centered_k @ centered_k))

    total = float(centered_sigma @ centered_sigma)
    if total <= 0.0:
        return _failed_fit(
            "degenerate", "The singular values in the window are all equal.", rank, k_min, k_max
        )

    residual = centered_sigma - slope * centered_k
    r2 = 1.0 - float(residual @ residual) / total

    warning = ""
    if r2 < POOR_FIT_R2:
        warning = f"Poor power-law fit (R^2 = {r2:.2f}); alpha describes the window only roughly."

    return TailFit(-slope, "ok", warning, k_min, k_max, n_points, r2, rank)


def fisher_rao(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Compute the Fisher-Rao distance 2 arccos(BC(p, q)) between categorical distributions.

    The Bhattacharyya coefficient BC = sum_i sqrt(p_i q_i) is computed in log space as
    exp(logsumexp((log p + log q) / 2)) and clamped to [0, 1]. Where BC is close to 1 the
    arccos form loses precision, so there the equal form 4 arcsin(||sqrt p - sqrt q|| / 2)
    is used instead.

    Args:
        log_p: Log-probabilities, shape (..., vocab). Rows should be normalised.
        log_q: Log-probabilities, shape (..., vocab), broadcastable with ``log_p``.

    Returns:
        Distances in [0, pi], shape (...), in the promoted dtype of the inputs.
    """
    import torch

    log_bc = torch.logsumexp((log_p + log_q) / 2, dim=-1)
    bc = log_bc.exp().clamp(0.0, 1.0)
    arccos_form = 2.0 * torch.arccos(bc)

    root_gap = (log_p / 2).exp() - (log_q / 2).exp()
    hellinger_norm = torch.linalg.vector_norm(root_gap, dim=-1)
    arcsin_form = 4.0 * torch.arcsin((hellinger_norm / 2).clamp(0.0, 1.0))

    return torch.where(bc > ARCSIN_SWITCH_BC, arcsin_form, arccos_form)


def spectrum_from_gram(gram: Any, column_sums: Any, count: float, center: bool) -> np.ndarray:
    """Return the singular values of H from its streamed Gram matrix.

    With G = H^T H, s = column sums of H and n rows, the centred Gram matrix is
    G - s s^T / n, and the singular values of (centred) H are the square roots of its
    eigenvalues. Small negative eigenvalues from rounding are clipped to zero.

    Args:
        gram: Gram matrix, shape (hidden, hidden); numpy array or torch tensor.
        column_sums: Column sums of H, shape (hidden,).
        count: Number of rows (tokens) of H.
        center: Subtract the column means first.

    Returns:
        Singular values in descending order, shape (hidden,), float64.
    """
    import torch

    gram = torch.as_tensor(_to_float64_numpy(gram))
    if center and count > 0:
        sums = torch.as_tensor(_to_float64_numpy(column_sums))
        gram = gram - torch.outer(sums, sums) / float(count)

    # torch's eigvalsh, not numpy's: mixing numpy's OpenBLAS threads with torch's thread pool in
    # one process made traces several times slower on a 2-core machine.
    gram = (gram + gram.T) / 2.0
    eigenvalues = torch.linalg.eigvalsh(gram).numpy()
    return np.sqrt(np.clip(eigenvalues, 0.0, None))[::-1].copy()


def _to_float64_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)
