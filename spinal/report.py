"""Exports: offline HTML figures, PNG and SVG images, per-layer tables and the audit report.

The HTML outputs embed plotly.js, so they open without a network connection. Static images go
through kaleido, which drives a local Chromium; without one, ``figure_image`` raises
``ExportError`` with the fix instead of failing deep inside kaleido. Every piece of user text
(labels, paths, prompt sources, warnings) is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from spinal import __version__
from spinal.errors import SpinalError
from spinal.figures import run_label, settings_text
from spinal.stats import Comparison, RunLike, format_interval

logger = logging.getLogger(__name__)

BROWSER_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
"""Executable names searched on PATH for static image export."""

FALLBACK_BROWSER = Path("/usr/bin/chromium")

IMAGE_FORMATS = ("png", "svg")

PLOTLY_CONFIG = {"displaylogo": False}

TRANSIENT_KALEIDO_ERRORS = ("kaleido_scopes is not defined",)
"""Messages of kaleido failures seen now and then on a working setup (kaleido 1.5).

An export that fails with one of them is tried once more."""

MAX_ERROR_CHARS = 300


class ExportError(SpinalError):
    """A figure or report could not be exported."""


def find_browser() -> str | None:
    """Return the Chromium or Chrome executable kaleido will use, or None when none is installed.

    ``BROWSER_PATH`` (read by kaleido's browser finder) wins when it names an existing file.
    """
    configured = os.environ.get("BROWSER_PATH", "").strip()
    if configured and Path(configured).is_file():
        return configured

    for name in BROWSER_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found

    if FALLBACK_BROWSER.is_file():
        return str(FALLBACK_BROWSER)

    return None


def static_export_status() -> tuple[bool, str]:
    """Return whether PNG/SVG export can work here, and a sentence saying why or why not."""
    browser = find_browser()
    if browser is None:
        return False, (
            "PNG and SVG export needs Chromium or Chrome, and none was found: install chromium "
            "(for example `apt-get install chromium`) or set BROWSER_PATH to a Chrome executable. "
            "HTML export works without it."
        )

    return True, f"PNG and SVG export uses {browser}."


def figure_html(fig: go.Figure) -> str:
    """Return a full, self-contained HTML page of ``fig`` with plotly.js inlined."""
    return pio.to_html(fig, include_plotlyjs=True, full_html=True, config=PLOTLY_CONFIG)


def figure_image(fig: go.Figure, fmt: str = "png", *, width: int = 1200, height: int | None = None, scale: float = 2.0) -> bytes:
    """Render ``fig`` to PNG or SVG bytes with kaleido and the local browser.

    Args:
        fig: Figure to render.
        fmt: ``png`` or ``svg``.
        width: Width in CSS pixels.
        height: Height in CSS pixels; the figure's layout height (or 600) when None.
        scale: Pixel density for PNG.

    Raises:
        ExportError: For an unknown format, no browser, or a kaleido failure.
    """
    if fmt not in IMAGE_FORMATS:
        raise ExportError(f"image format {fmt!r} is not supported: use one of {', '.join(IMAGE_FORMATS)}.")

    browser = find_browser()
    if browser is None:
        raise ExportError(static_export_status()[1])

    os.environ.setdefault("BROWSER_PATH", browser)
    render_height = height or int(fig.layout.height or 600)
    for attempt in (1, 2):
        try:
            return pio.to_image(fig, format=fmt, width=width, height=render_height, scale=scale)
        except Exception as error:
            # kaleido and choreographer raise many error types; report each as one ExportError.
            if attempt == 1 and any(text in str(error) for text in TRANSIENT_KALEIDO_ERRORS):
                logger.warning("%s export failed with a transient kaleido error, retrying once: %s", fmt.upper(), error)
                continue

            logger.warning("%s export with %s failed", fmt.upper(), browser, exc_info=True)
            raise ExportError(
                f"{fmt.upper()} export with {browser} failed ({type(error).__name__}: {_one_line(error)}); "
                "export HTML instead, or check that the browser starts headless."
            ) from error

    raise AssertionError("unreachable: the second attempt returns or raises")


def _one_line(error: BaseException) -> str:
    """Return the first non-empty line of an error message, cut to ``MAX_ERROR_CHARS``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else "no message"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def layers_table(runs: Sequence[RunLike]) -> pd.DataFrame:
    """Return the layer tables of ``runs`` stacked, with run id, label and settings columns."""
    frames = []
    for run in runs:
        frame = run.layers.copy()
        model = run.manifest.get("model") or {}
        frame.insert(0, "run_id", run.run_id)
        frame.insert(1, "label", run_label(run))
        frame.insert(2, "model_source", model.get("source"))
        frame["dtype"] = model.get("dtype")
        frame["settings"] = settings_text(run.manifest)
        frames.append(frame)

    if not frames:
        return pd.DataFrame()

    return pd.concat(frames, ignore_index=True)


def comparison_table(comparison: Comparison, reference: RunLike, target: RunLike) -> pd.DataFrame:
    """Return the per-layer comparison table with columns naming what was compared.

    Adds reference and target run ids and labels and the terminal band (relative depth), so an
    exported file alone identifies the runs and the band behind its deltas.
    """
    table = comparison.table.copy()
    band_low, band_high = comparison.summary.band
    identity = {
        "reference_id": reference.run_id,
        "reference_label": run_label(reference),
        "target_id": target.run_id,
        "target_label": run_label(target),
        "band_low": float(band_low),
        "band_high": float(band_high),
    }
    for position, (name, value) in enumerate(identity.items()):
        table.insert(position, name, value)

    return table


def table_csv(table: pd.DataFrame) -> bytes:
    """Return ``table`` as UTF-8 CSV bytes without the index."""
    return table.to_csv(index=False).encode("utf-8")


def table_parquet(table: pd.DataFrame) -> bytes:
    """Return ``table`` as Parquet bytes (pyarrow) without the index."""
    buffer = io.BytesIO()
    table.to_parquet(buffer, engine="pyarrow", index=False)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Audit report

_STYLE = """
body { font-family: "Liberation Sans", Arial, sans-serif; color: #1a1a1a; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; }
h1 { font-size: 1.8rem; } h2 { font-size: 1.35rem; margin-top: 2.2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.8rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f2f4f7; }
.verdict { font-size: 1.15rem; padding: 0.6rem 0.9rem; border-left: 5px solid #0072b2; background: #f2f4f7; }
.warning { border-left: 5px solid #e69f00; padding: 0.4rem 0.8rem; background: #fff8e6; margin: 0.4rem 0; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
.muted { color: #555; font-size: 0.9rem; }
"""


def build_report(
    runs: Sequence[RunLike],
    figures: Sequence[tuple[str, go.Figure]],
    *,
    comparison: Comparison | None = None,
    band: tuple[float, float] | None = None,
    axis: str = "layer",
    title: str = "SPINAL audit report",
    generated: datetime | None = None,
) -> str:
    """Build a one-file HTML audit report that opens offline.

    Args:
        runs: Selected runs, in display order.
        figures: ``(caption, figure)`` pairs; captions are escaped.
        comparison: Reference-versus-target comparison for the headline numbers, if any.
        band: Terminal band as relative depth, shown with the selection.
        axis: Depth axis used by the figures.
        title: Report title (escaped).
        generated: Timestamp to print; now (UTC) when None.

    Returns:
        The HTML document as a string.
    """
    moment = generated or datetime.now(timezone.utc)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        # plotly.js once, inline; every figure below reuses it.
        f'<script type="text/javascript">{_plotly_js()}</script>',
        "</head><body>",
        f"<h1>{_escape(title)}</h1>",
        (
            f'<p class="muted">Generated {moment.isoformat(timespec="seconds")} by SPINAL {__version__}. '
            "Delta = target minus reference. Layers whose alpha fit failed carry no number.</p>"
        ),
        _selection_section(runs, comparison, band, axis),
    ]
    if comparison is not None:
        parts.append(_comparison_section(comparison))

    parts.append("<h2>Figures</h2>")
    for caption, fig in figures:
        parts.append(f"<h3>{_escape(caption)}</h3>")
        parts.append(pio.to_html(fig, include_plotlyjs=False, full_html=False, config=PLOTLY_CONFIG))

    parts.append(_provenance_section(runs))
    parts.append(_layers_section(runs))
    parts.append("</body></html>")
    return "\n".join(parts)


def _escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    # A literal "</script>" inside the bundle would end the tag early.
    return get_plotlyjs().replace("</script>", "<\\/script>")


def _selection_section(
    runs: Sequence[RunLike], comparison: Comparison | None, band: tuple[float, float] | None, axis: str
) -> str:
    rows = []
    for run in runs:
        role = ""
        if comparison is not None and run.run_id == comparison.ref_id:
            role = "reference"
        elif comparison is not None and run.run_id == comparison.target_id:
            role = "target"

        rows.append((run_label(run), run.run_id, role, settings_text(run.manifest)))

    body = "".join(f"<tr>{''.join(f'<td>{_escape(cell)}</td>' for cell in row)}</tr>" for row in rows)
    band_text = f"relative depth {band[0]:.2f} to {band[1]:.2f}" if band else "not set"
    return (
        "<h2>Selection</h2>"
        f"<p>Depth axis: {_escape(axis)}. Terminal band: {_escape(band_text)}.</p>"
        "<table><tr><th>checkpoint</th><th>run id</th><th>role</th><th>settings</th></tr>"
        f"{body}</table>"
    )


def _comparison_section(comparison: Comparison) -> str:
    summary = comparison.summary
    alpha = format_interval(summary.band_delta_alpha, summary.band_delta_alpha_low, summary.band_delta_alpha_high)
    transport = format_interval(
        summary.band_delta_transport, summary.band_delta_transport_low, summary.band_delta_transport_high, digits=4
    )
    rows = [
        ("verdict", summary.verdict),
        ("Δ alpha in band (mean, interval)", alpha),
        ("Δ transport in band (mean, interval)", transport),
        ("share of |Δ alpha| in band", _percent(summary.band_share_alpha)),
        ("share of |Δ transport| in band", _percent(summary.band_share_transport)),
        ("band layers with alpha", ", ".join(map(str, summary.band_layers_alpha)) or "none"),
        ("band layers with transport", ", ".join(map(str, summary.band_layers_transport)) or "none"),
        ("confidence level", f"{summary.level:.0%}"),
        ("paired replicates", str(summary.n_replicates)),
    ]
    table = "".join(f"<tr><th>{_escape(name)}</th><td>{_escape(value)}</td></tr>" for name, value in rows)
    warnings = "".join(f'<div class="warning">{_escape(text)}</div>' for text in comparison.warnings)
    return (
        "<h2>Headline</h2>"
        f'<p class="verdict">{_escape(summary.sentence)}</p>'
        f"{warnings}<table>{table}</table>"
    )


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0%}"


def _provenance_section(runs: Sequence[RunLike]) -> str:
    parts = ["<h2>Provenance</h2>"]
    for run in runs:
        manifest = run.manifest
        model = manifest.get("model") or {}
        prompts = manifest.get("prompts") or {}
        rows = [
            ("run id", run.run_id),
            ("trace key", manifest.get("key")),
            ("created", manifest.get("created")),
            ("model source", model.get("source")),
            ("revision", model.get("revision")),
            ("model type / architecture", f"{model.get('model_type')} / {model.get('architecture')}"),
            ("layers / hidden / vocabulary", f"{model.get('n_layers')} / {model.get('hidden_size')} / {model.get('vocab_size')}"),
            ("weights fingerprint", model.get("fingerprint")),
            ("dtype / device", f"{model.get('dtype')} / {model.get('device')}"),
            ("trust_remote_code", model.get("trust_remote_code")),
            ("prompt source / format", f"{prompts.get('source')} / {prompts.get('format')}"),
            ("prompt-set sha256", prompts.get("sha256")),
            ("prompts / tokens / truncated", f"{prompts.get('n_prompts')} / {prompts.get('n_tokens')} / {prompts.get('n_truncated')}"),
            ("series", json.dumps(manifest.get("series"))),
            ("library versions", ", ".join(f"{name} {version}" for name, version in (manifest.get("versions") or {}).items())),
            ("timings (s)", json.dumps(manifest.get("timings"))),
            ("layer convention", manifest.get("layer_convention")),
        ]
        table = "".join(f"<tr><th>{_escape(name)}</th><td>{_escape(value)}</td></tr>" for name, value in rows)
        settings = json.dumps(manifest.get("settings"), indent=2, sort_keys=True)
        warnings = "".join(f'<div class="warning">{_escape(text)}</div>' for text in manifest.get("warnings") or [])
        parts.append(
            f"<h3>{_escape(run_label(run))}</h3><table>{table}</table>"
            f"{warnings}<details><summary>Trace settings</summary><pre>{_escape(settings)}</pre></details>"
        )

    return "".join(parts)


def _layers_section(runs: Sequence[RunLike]) -> str:
    columns = ["layer", "depth", "alpha", "alpha_status", "alpha_ci_low", "alpha_ci_high", "fit_r2", "transport", "transport_status", "transport_ci_low", "transport_ci_high"]
    parts = ["<h2>Per-layer values</h2>"]
    for run in runs:
        table = run.layers[columns].copy()
        failed = table["alpha_status"] != "ok"
        table.loc[failed, ["alpha", "alpha_ci_low", "alpha_ci_high"]] = float("nan")
        parts.append(f"<h3>{_escape(run_label(run))}</h3>")
        parts.append(table.to_html(index=False, escape=True, na_rep="", float_format=lambda value: f"{value:.4f}"))

    return "".join(parts)
