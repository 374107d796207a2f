"""Streamed per-layer statistics of a trace and their bootstrap replicates.

The accumulator keeps, per row (embedding output and each block output):

* Gram matrices H^T H and column sums of the selected tokens' hidden states, one per prompt
  group, from which the singular values of H (and of bootstrap resamples of the groups) follow
  exactly;
* per-prompt sums of the Fisher-Rao distances between adjacent rows' logit-lens distributions,
  computed chunk by chunk over tokens.

Its memory depends on hidden size, depth, vocabulary and the number of prompts (one float per
prompt and row), never on the number of tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from spinal.settings import TraceSettings

if TYPE_CHECKING:
    import torch

ProgressCallback = Callable[[str, int, int], None]
"""Called as progress(stage, done, total); stages: load, forward, fit, bootstrap, write."""

LENS_CHUNK_BYTES = 256 * 1024**2
"""Memory budget for the float32 lens log-probabilities of one token chunk (two layers live)."""

MIN_ALPHA_GROUPS = 4
"""Minimum number of prompt groups for alpha intervals; fewer gives intervals too coarse to report."""


RANK_TOLERANCE = 0.02
"""Largest relative rank change of a bootstrap replicate before a row's alpha interval is dropped."""


def _report(progress: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


class StatisticsAccumulator:
    """Streams per-layer Gram matrices and per-prompt transport sums over batches."""

    def __init__(
        self,
        *,
        n_rows: int,
        hidden_size: int,
        n_prompts: int,
        vocab_size: int,
        settings: TraceSettings,
        device: torch.device,
    ) -> None:
        import torch

        self.n_rows = n_rows
        self.vocab_size = max(int(vocab_size), 1)
        self.hidden_size = hidden_size
        self.n_prompts = n_prompts
        self.settings = settings
        self.warnings: list[str] = []

        self.gram_dtype = torch.float64 if settings.gram_dtype == "float64" else torch.float32
        # MPS has no float64 kernels, so float64 Gram matrices accumulate on the CPU there.
        self.gram_device = torch.device("cpu") if device.type == "mps" and settings.gram_dtype == "float64" else device

        bootstrap = settings.bootstrap
        self.transport_groups = min(bootstrap.groups, n_prompts) if bootstrap.replicates > 0 else 1
        gram_bytes = n_rows * hidden_size * hidden_size * (8 if settings.gram_dtype == "float64" else 4)
        affordable_groups = max(1, bootstrap.max_gram_bytes // max(gram_bytes, 1))
        self.alpha_groups = min(self.transport_groups, affordable_groups)

        if bootstrap.replicates > 0 and self.transport_groups < MIN_ALPHA_GROUPS:
            self.warnings.append(
                f"Alpha intervals skipped: {self.transport_groups} prompt group(s) from {n_prompts} prompts "
                f"and groups={bootstrap.groups}; alpha intervals need at least {MIN_ALPHA_GROUPS} "
                "(use more prompts or more groups)."
            )
            self.alpha_groups = 1
        elif bootstrap.replicates > 0 and self.alpha_groups < MIN_ALPHA_GROUPS:
            self.warnings.append(
                f"Alpha intervals skipped: only {self.alpha_groups} group Gram matrices of "
                f"{gram_bytes / 1024**2:.0f} MiB (hidden size {hidden_size}, {n_rows} rows) fit in "
                f"max_gram_bytes={bootstrap.max_gram_bytes}; at least {MIN_ALPHA_GROUPS} are needed "
                "(raise the limit, or pass --bootstrap 0)."
            )
            self.alpha_groups = 1

        self.group_of_prompt = np.arange(n_prompts) % self.transport_groups
        self.alpha_group_of_prompt = torch.as_tensor(np.arange(n_prompts) % self.alpha_groups, device=device)

        shape = (self.alpha_groups, n_rows, hidden_size, hidden_size)
        self.gram = torch.zeros(shape, dtype=self.gram_dtype, device=self.gram_device)
        self.column_sums = torch.zeros(shape[:3], dtype=self.gram_dtype, device=self.gram_device)
        self.group_counts = torch.zeros(self.alpha_groups, dtype=torch.float64)

        self.transport_sums = torch.zeros((n_prompts, n_rows - 1), dtype=torch.float64, device=device)
        self.transport_squares = torch.zeros(n_rows - 1, dtype=torch.float64, device=device)
        self.tokens_per_prompt = torch.zeros(n_prompts, dtype=torch.float64, device=device)

    def add_hidden(self, selected_states: list[torch.Tensor], prompt_of_token: torch.Tensor) -> None:
        """Add the selected tokens' hidden states, shape (tokens, hidden) per row, to the Gram matrices."""
        import torch

        groups = self.alpha_group_of_prompt[prompt_of_token]
        self.tokens_per_prompt.index_add_(
            0, prompt_of_token, torch.ones_like(prompt_of_token, dtype=torch.float64)
        )

        for group in torch.unique(groups).tolist():
            token_mask = groups == group
            self.group_counts[group] += float(token_mask.sum().item())

            for row, state in enumerate(selected_states):
                block = state[token_mask].to(device=self.gram_device, dtype=self.gram_dtype)
                self.gram[group, row].addmm_(block.T, block)
                self.column_sums[group, row] += block.sum(0)

    def add_transport(self, lens: Any, selected_states: list[torch.Tensor], prompt_of_token: torch.Tensor) -> None:
        """Add per-token Fisher-Rao distances between adjacent rows' lens distributions."""
        from spinal.metrics import fisher_rao

        n_tokens = selected_states[0].shape[0]
        chunk = max(1, LENS_CHUNK_BYTES // (self.vocab_size * 4 * 3))

        for start in range(0, n_tokens, chunk):
            stop = min(start + chunk, n_tokens)
            prompts = prompt_of_token[start:stop]
            previous = lens.log_probs(selected_states[0][start:stop])

            for row in range(1, self.n_rows):
                current = lens.log_probs(selected_states[row][start:stop])
                distance = fisher_rao(previous, current).double()
                self.transport_sums[:, row - 1].index_add_(0, prompts, distance)
                self.transport_squares[row - 1] += (distance * distance).sum()
                previous = current

    def finish(self, progress: ProgressCallback | None) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """Fit every row, form bootstrap replicates, and return the tables."""
        import pandas as pd

        from spinal.metrics import spectrum_from_gram, tail_exponent

        settings = self.settings
        center = settings.fit.center
        total_gram = self.gram.sum(0)
        total_sums = self.column_sums.sum(0)
        total_count = float(self.group_counts.sum())

        layer_rows = []
        spectra_rows = []
        for row in range(self.n_rows):
            sigma = spectrum_from_gram(total_gram[row], total_sums[row], total_count, center)
            fit = tail_exponent(sigma, settings.fit)
            layer_rows.append(
                {
                    "layer": row,
                    "depth": row / (self.n_rows - 1),
                    "n_tokens": int(total_count),
                    "rank": fit.rank,
                    "alpha": fit.alpha,
                    "alpha_status": fit.status,
                    "alpha_warning": fit.warning,
                    "fit_k_min": fit.k_min,
                    "fit_k_max": fit.k_max,
                    "fit_points": fit.n_points,
                    "fit_r2": fit.r2,
                }
            )
            for rank, value in enumerate(sigma[: max(fit.rank, 0)], start=1):
                spectra_rows.append({"layer": row, "k": rank, "sigma": float(value)})
            _report(progress, "fit", row + 1, self.n_rows)

        transport_sums = self.transport_sums.cpu().numpy()
        tokens_per_prompt = self.tokens_per_prompt.cpu().numpy()
        token_total = tokens_per_prompt.sum()
        transport_mean = transport_sums.sum(0) / token_total
        transport_second = self.transport_squares.cpu().numpy() / token_total
        transport_std = np.sqrt(np.clip(transport_second - transport_mean**2, 0.0, None))

        layers = pd.DataFrame(layer_rows)
        layers["transport"] = np.append(transport_mean, np.nan)
        layers["transport_std"] = np.append(transport_std, np.nan)
        layers["transport_status"] = ["ok"] * (self.n_rows - 1) + ["last_layer"]

        ranks = [row["rank"] for row in layer_rows]
        replicates, bootstrap_info = self._bootstrap(transport_sums, tokens_per_prompt, ranks, progress)
        level = settings.bootstrap.level
        for column in ("alpha", "transport"):
            low, high = _percentile_intervals(replicates, column, self.n_rows, level)
            layers[f"{column}_ci_low"] = low
            layers[f"{column}_ci_high"] = high

        outside = (layers["alpha"] < layers["alpha_ci_low"]) | (layers["alpha"] > layers["alpha_ci_high"])
        for row in np.flatnonzero(outside.to_numpy()):
            note = "The bootstrap interval does not contain the estimate (resampling bias), so read it with care."
            layers.loc[row, "alpha_warning"] = " ".join(filter(None, [layers.loc[row, "alpha_warning"], note]))

        prompt_layers = _prompt_layers_table(transport_sums, tokens_per_prompt)
        tables = {
            "layers": layers,
            "prompt_layers": prompt_layers,
            "replicates": replicates,
            "spectra": pd.DataFrame(spectra_rows, columns=["layer", "k", "sigma"]),
        }
        return tables, bootstrap_info, self.warnings

    def _bootstrap(
        self,
        transport_sums: np.ndarray,
        tokens_per_prompt: np.ndarray,
        ranks: list[int],
        progress: ProgressCallback | None,
    ) -> tuple[Any, dict[str, Any]]:
        import pandas as pd

        bootstrap = self.settings.bootstrap
        columns = ["replicate", "layer", "alpha", "transport"]
        info = {
            "replicates": bootstrap.replicates,
            "transport_groups": self.transport_groups,
            "alpha_groups": self.alpha_groups if self.alpha_groups >= MIN_ALPHA_GROUPS else 0,
        }
        if bootstrap.replicates == 0 or self.transport_groups < 2:
            if bootstrap.replicates > 0:
                self.warnings.append("Intervals skipped: a bootstrap over prompts needs at least 2 prompts.")
            return pd.DataFrame(columns=columns), info

        rng = np.random.default_rng(bootstrap.seed)
        transport_weights = _draw_group_weights(rng, bootstrap.replicates, self.transport_groups)

        group_sums = np.zeros((self.transport_groups, self.n_rows - 1))
        np.add.at(group_sums, self.group_of_prompt, transport_sums)
        group_tokens = np.bincount(self.group_of_prompt, weights=tokens_per_prompt, minlength=self.transport_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            transport_replicates = (transport_weights @ group_sums) / (transport_weights @ group_tokens)[:, None]

        alpha_replicates = np.full((bootstrap.replicates, self.n_rows), np.nan)
        if self.alpha_groups >= MIN_ALPHA_GROUPS:
            if self.alpha_groups == self.transport_groups:
                alpha_weights = transport_weights
            else:
                alpha_weights = _draw_group_weights(
                    np.random.default_rng(bootstrap.seed), bootstrap.replicates, self.alpha_groups
                )
            alpha_replicates = self._alpha_replicates(alpha_weights, ranks, progress)

        replicate_index = np.repeat(np.arange(bootstrap.replicates), self.n_rows)
        layer_index = np.tile(np.arange(self.n_rows), bootstrap.replicates)
        transport_full = np.concatenate([transport_replicates, np.full((bootstrap.replicates, 1), np.nan)], axis=1)
        table = pd.DataFrame(
            {
                "replicate": replicate_index,
                "layer": layer_index,
                "alpha": alpha_replicates.ravel(),
                "transport": transport_full.ravel(),
            }
        )
        return table, info

    def _alpha_replicates(self, weights: np.ndarray, ranks: list[int], progress: ProgressCallback | None) -> np.ndarray:
        import torch

        from spinal.metrics import tail_exponent

        n_replicates = weights.shape[0]
        center = self.settings.fit.center
        result = np.full((n_replicates, self.n_rows), np.nan)
        unstable_rows: list[int] = []
        counts = self.group_counts.to(self.gram_device, torch.float64)
        weight_tensor = torch.as_tensor(weights, dtype=torch.float64, device=self.gram_device)

        for row in range(self.n_rows):
            grams = self.gram[:, row].to(torch.float64)
            sums = self.column_sums[:, row].to(torch.float64)
            replicate_grams = torch.einsum("bg,gij->bij", weight_tensor, grams)
            replicate_sums = weight_tensor @ sums
            replicate_counts = weight_tensor @ counts

            if center:
                replicate_grams = replicate_grams - torch.einsum(
                    "bi,bj->bij", replicate_sums, replicate_sums
                ) / replicate_counts.clamp_min(1.0)[:, None, None]

            replicate_grams = (replicate_grams + replicate_grams.transpose(1, 2)) / 2
            eigenvalues = _batched_singular_values(replicate_grams)

            rank_changed = False
            for replicate in range(n_replicates):
                fit = tail_exponent(eigenvalues[replicate], self.settings.fit)
                result[replicate, row] = fit.alpha
                rank_changed = rank_changed or abs(fit.rank - ranks[row]) > max(1, RANK_TOLERANCE * ranks[row])

            # Drawing groups with replacement repeats tokens. When the tokens do not outnumber
            # the hidden size, that lowers the rank, moves the fit window, and biases the interval.
            if rank_changed:
                result[:, row] = np.nan
                unstable_rows.append(row)
            _report(progress, "bootstrap", row + 1, self.n_rows)

        if unstable_rows:
            self.warnings.append(
                f"Alpha intervals skipped on rows {unstable_rows}: resampling prompt groups changes the "
                "rank of H there, because the selected tokens barely outnumber the hidden size. "
                "Use more tokens: more or longer prompts, or more positions per prompt."
            )
        return result


def _batched_singular_values(grams: torch.Tensor) -> np.ndarray:
    """Return the square roots of the eigenvalues of a batch of Gram matrices, shape (batch, hidden)."""
    import torch

    # torch, not numpy: on a 2-core machine, numpy's OpenBLAS threads and torch's OpenMP threads
    # competed for the cores when both ran in one trace, slowing the whole trace 5x or more.
    eigenvalues = torch.linalg.eigvalsh(grams).cpu().numpy()
    return np.sqrt(np.clip(eigenvalues, 0.0, None))


def _draw_group_weights(rng: np.random.Generator, replicates: int, groups: int) -> np.ndarray:
    """Return multinomial group counts, shape (replicates, groups), of draws with replacement."""
    draws = rng.integers(0, groups, size=(replicates, groups))
    weights = np.zeros((replicates, groups))
    for replicate in range(replicates):
        weights[replicate] = np.bincount(draws[replicate], minlength=groups)
    return weights


def _percentile_intervals(replicates: Any, column: str, n_rows: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    low = np.full(n_rows, np.nan)
    high = np.full(n_rows, np.nan)
    if len(replicates) == 0:
        return low, high

    tail = (1.0 - level) / 2.0
    for layer, values in replicates.groupby("layer")[column]:
        finite = values.to_numpy(dtype=float)
        finite = finite[np.isfinite(finite)]
        # Intervals from a minority of finite replicates would hide failed fits, so skip them.
        if finite.size * 2 < len(values):
            continue
        low[int(layer)] = np.quantile(finite, tail)
        high[int(layer)] = np.quantile(finite, 1.0 - tail)
    return low, high


def _prompt_layers_table(transport_sums: np.ndarray, tokens_per_prompt: np.ndarray) -> Any:
    import pandas as pd

    n_prompts, n_steps = transport_sums.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        means = transport_sums / tokens_per_prompt[:, None]
    return pd.DataFrame(
        {
            "prompt_index": np.repeat(np.arange(n_prompts), n_steps),
            "layer": np.tile(np.arange(n_steps), n_prompts),
            "n_used": np.repeat(tokens_per_prompt.astype(np.int64), n_steps),
            "transport_sum": transport_sums.ravel(),
            "transport_mean": np.where(np.repeat(tokens_per_prompt, n_steps) > 0, means.ravel(), np.nan),
        }
    )
