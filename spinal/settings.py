"""Every choice that changes a trace's numbers, as one recorded, hashable settings object.

The method leaves several choices open (the tail window of the spectrum fit, centering,
which token positions count, the bootstrap). Each one is a field here with a documented
default; the trace key hashes all of them, and the run manifest records them.

This module imports no torch, so the CLI can compute a trace key without loading a model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from spinal.errors import SettingsError

SCHEMA_VERSION = 1
"""Version of the stored run layout (manifest fields and table columns)."""

MAX_TOKENS_LIMIT = 1_000_000
"""Upper bound of ``max_tokens``; no released model has a longer context."""

TokenPositions = Literal["skip-first", "all", "last"]
GramDtype = Literal["float64", "float32"]


@dataclass(frozen=True)
class FitSettings:
    """Settings of the tail-exponent fit of one layer's singular-value spectrum.

    Ranks are 1-based over the singular values kept after the floor. With the defaults and a
    rank of 64 the fit uses ranks 4 to 32.

    Attributes:
        center: Subtract the per-feature mean over tokens from H before the spectrum, so the
            mean direction does not dominate sigma_1.
        drop_top: Fraction of the rank dropped from the top before the window starts; protects
            the fit from a few large leading outliers.
        fit_until: Fraction of the rank where the window ends.
        min_points: Minimum number of singular values in the window for a fit; fewer gives status
            ``too_few`` and no number.
        rel_floor: Singular values below this fraction of the largest are treated as zero and
            excluded from the rank.
    """

    center: bool = True
    drop_top: float = 0.05
    fit_until: float = 0.5
    min_points: int = 5
    rel_floor: float = 1e-6

    def validate(self) -> None:
        """Raise SettingsError when a field is outside its range."""
        if not 0.0 <= self.drop_top < 1.0:
            raise SettingsError(f"drop_top={self.drop_top} is invalid: use a fraction in [0, 1).")

        if not 0.0 < self.fit_until <= 1.0:
            raise SettingsError(f"fit_until={self.fit_until} is invalid: use a fraction in (0, 1].")

        if self.fit_until <= self.drop_top:
            raise SettingsError(
                f"fit_until={self.fit_until} must be larger than drop_top={self.drop_top}, "
                "or the fit window is empty."
            )

        if self.min_points < 2:
            raise SettingsError(f"min_points={self.min_points} is invalid: a line fit needs at least 2.")

        if not 0.0 <= self.rel_floor < 1.0:
            raise SettingsError(f"rel_floor={self.rel_floor} is invalid: use a fraction in [0, 1).")


@dataclass(frozen=True)
class TokenSettings:
    """Token selection: the positions of each prompt that enter the statistics.

    Attributes:
        positions: ``skip-first`` drops position 0 (BOS or first token, whose residual is an
            attention sink in most models), ``all`` keeps every non-pad position, ``last`` keeps
            only the final non-pad position of each prompt.
        max_tokens: Prompts longer than this many tokens are truncated from the right.
        chat_template: Wrap each prompt as one user turn with the tokenizer's chat template.
        add_special_tokens: Let the tokenizer add its special tokens (BOS for Llama-style models).
    """

    positions: TokenPositions = "skip-first"
    max_tokens: int = 256
    chat_template: bool = False
    add_special_tokens: bool = True

    def validate(self) -> None:
        """Raise SettingsError when a field is outside its range."""
        if self.positions not in ("skip-first", "all", "last"):
            raise SettingsError(
                f"positions={self.positions!r} is invalid: use 'skip-first', 'all' or 'last'."
            )

        if not 2 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise SettingsError(
                f"max_tokens={self.max_tokens} is invalid: use a value from 2 to {MAX_TOKENS_LIMIT}."
            )


@dataclass(frozen=True)
class BootstrapSettings:
    """Confidence intervals by resampling groups of prompts with replacement.

    Prompts are dealt into ``groups`` groups by index (prompt i goes to group i mod groups).
    Each replicate draws groups with replacement from a generator seeded with ``seed``, so two
    runs with the same settings use the same draws and their replicates pair up for
    differences.

    Attributes:
        replicates: Number of bootstrap replicates; 0 turns intervals off.
        groups: Number of prompt groups; fewer prompts than this means one group per prompt.
        level: Two-sided confidence level of the percentile intervals.
        seed: Seed of the replicate draws.
        max_gram_bytes: Memory cap for the per-group Gram matrices that alpha intervals need.
            Above it the group count shrinks. Below 4 groups, alpha intervals are skipped with
            a warning in the run.
    """

    replicates: int = 200
    groups: int = 16
    level: float = 0.95
    seed: int = 0
    max_gram_bytes: int = 2 * 1024**3

    def validate(self) -> None:
        """Raise SettingsError when a field is outside its range."""
        if self.replicates < 0:
            raise SettingsError(f"replicates={self.replicates} is invalid: use 0 (off) or more.")

        if self.groups < 2:
            raise SettingsError(f"groups={self.groups} is invalid: use at least 2.")

        if not 0.5 <= self.level < 1.0:
            raise SettingsError(f"level={self.level} is invalid: use a value in [0.5, 1).")

        if self.seed < 0:
            raise SettingsError(f"seed={self.seed} is invalid: use 0 or more.")

        if self.max_gram_bytes < 0:
            raise SettingsError(f"max_gram_bytes={self.max_gram_bytes} is invalid: use 0 or more.")


@dataclass(frozen=True)
class TraceSettings:
    """All settings that change a trace's numbers.

    Attributes:
        fit: Tail-exponent fit settings.
        tokens: Token selection settings.
        bootstrap: Confidence-interval settings.
        gram_dtype: Precision of the streamed Gram matrices. float64 keeps eigenvalues down to
            about 1e-12 of the largest; float32 only to about 1e-6.
    """

    fit: FitSettings = field(default_factory=FitSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    gram_dtype: GramDtype = "float64"

    def validate(self) -> None:
        """Raise SettingsError when any field is outside its range."""
        self.fit.validate()
        self.tokens.validate()
        self.bootstrap.validate()

        if self.gram_dtype not in ("float64", "float32"):
            raise SettingsError(f"gram_dtype={self.gram_dtype!r} is invalid: use 'float64' or 'float32'.")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain JSON-ready nested dicts."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TraceSettings:
        """Build settings from the dict that ``to_dict`` returns (as stored in a manifest)."""
        return cls(
            fit=FitSettings(**data.get("fit", {})),
            tokens=TokenSettings(**data.get("tokens", {})),
            bootstrap=BootstrapSettings(**data.get("bootstrap", {})),
            gram_dtype=data.get("gram_dtype", "float64"),
        )


def canonical_hash(payload: Any) -> str:
    """Return the SHA-256 hex digest of a JSON value serialised with sorted keys."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
