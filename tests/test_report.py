"""Tests of spinal.report: offline HTML, static images, tables and the audit report."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from synthetic_runs import make_run

from spinal import figures, report
from spinal.stats import compare_runs

XSS_LABEL = "<script>alert(1)</script>"


class ResourceFinder(HTMLParser):
    """Collects the URLs that tags would load (script, link, img, iframe, ...); script bodies are not parsed."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            return

        self.urls.extend(value for name, value in attrs if name in ("src", "href") and value)


def external_resources(page: str) -> list[str]:
    finder = ResourceFinder()
    finder.feed(page)
    return [url for url in finder.urls if url.startswith(("http:", "https:", "//"))]


needs_browser = pytest.mark.skipif(report.find_browser() is None, reason="no Chromium or Chrome for kaleido on this machine")


@pytest.fixture(scope="module")
def reference():
    return make_run("base", failed_layers=(0,))


@pytest.fixture(scope="module")
def aligned():
    return make_run(XSS_LABEL, seed=1, alpha_shift=0.4, transport_shift=-0.03, failed_layers=(0,))


@pytest.fixture(scope="module")
def audit_html(reference, aligned):
    comparison = compare_runs(reference, aligned)
    figure_list = [
        ("profiles", figures.profile_figure([reference, aligned])),
        ("delta", figures.delta_figure(comparison, reference, aligned)),
    ]
    return report.build_report([reference, aligned], figure_list, comparison=comparison, band=(2 / 3, 1.0))


def test_figure_html_inlines_plotly(reference):
    page = report.figure_html(figures.profile_figure([reference]))
    assert "* plotly.js v" in page


def test_figure_html_draws_figure(reference):
    page = report.figure_html(figures.profile_figure([reference]))
    assert "Plotly.newPlot" in page


def test_figure_html_has_no_external_reference(reference):
    page = report.figure_html(figures.profile_figure([reference]))
    assert external_resources(page) == []


def test_find_browser_prefers_browser_path(tmp_path, monkeypatch):
    executable = tmp_path / "chrome"
    executable.write_text("")
    monkeypatch.setenv("BROWSER_PATH", str(executable))
    assert report.find_browser() == str(executable)


def test_find_browser_none_without_browser(tmp_path, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    monkeypatch.setattr(report, "FALLBACK_BROWSER", tmp_path / "missing")
    assert report.find_browser() is None


def test_static_export_status_explains_missing_browser(monkeypatch):
    monkeypatch.setattr(report, "find_browser", lambda: None)
    ok, message = report.static_export_status()
    assert not ok
    assert "needs Chromium" in message


def test_figure_image_without_browser_raises(reference, monkeypatch):
    monkeypatch.setattr(report, "find_browser", lambda: None)
    with pytest.raises(report.ExportError, match="needs Chromium"):
        report.figure_image(figures.profile_figure([reference]), "png")


def test_figure_image_retries_transient_kaleido_error(reference, monkeypatch):
    calls = []

    def flaky(fig, **options):
        calls.append(options["format"])
        if len(calls) == 1:
            raise RuntimeError("Error: kaleido_scopes is not defined")
        return b"\x89PNG image"

    monkeypatch.setattr(report, "find_browser", lambda: "/usr/bin/chromium")
    monkeypatch.setattr(report.pio, "to_image", flaky)
    assert report.figure_image(figures.profile_figure([reference]), "png") == b"\x89PNG image"
    assert calls == ["png", "png"]


def test_figure_image_error_is_one_line(reference, monkeypatch):
    def failing(fig, **options):
        raise RuntimeError("browser exited\nTraceback (most recent call last):\n  more lines")

    monkeypatch.setattr(report, "find_browser", lambda: "/bin/false")
    monkeypatch.setattr(report.pio, "to_image", failing)
    with pytest.raises(report.ExportError) as raised:
        report.figure_image(figures.profile_figure([reference]), "png")
    assert str(raised.value) == (
        "PNG export with /bin/false failed (RuntimeError: browser exited); "
        "export HTML instead, or check that the browser starts headless."
    )


def test_figure_image_fails_with_false_browser(reference, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/bin/false")
    with pytest.raises(report.ExportError, match="export HTML instead"):
        report.figure_image(figures.checkpoint_heatmap([reference]), "png", width=300)


def test_comparison_table_names_runs_and_band(reference, aligned):
    comparison = compare_runs(reference, aligned, band=(0.5, 1.0))
    table = report.comparison_table(comparison, reference, aligned)
    assert list(table.columns[:6]) == ["reference_id", "reference_label", "target_id", "target_label", "band_low", "band_high"]
    assert set(table["reference_id"]) == {reference.run_id}
    assert set(table["target_id"]) == {aligned.run_id}
    assert set(table["target_label"]) == {XSS_LABEL}
    assert (set(table["band_low"]), set(table["band_high"])) == ({0.5}, {1.0})


def test_figure_image_rejects_unknown_format(reference):
    with pytest.raises(report.ExportError, match="'gif' is not supported"):
        report.figure_image(figures.profile_figure([reference]), "gif")


@pytest.mark.slow
@needs_browser
def test_figure_image_png(reference):
    data = report.figure_image(figures.checkpoint_heatmap([reference]), "png", width=600)
    assert data.startswith(b"\x89PNG")


@pytest.mark.slow
@needs_browser
def test_figure_image_svg(reference):
    data = report.figure_image(figures.checkpoint_heatmap([reference]), "svg", width=600)
    assert b"<svg" in data[:500]


def test_layers_table_stacks_runs(reference, aligned):
    table = report.layers_table([reference, aligned])
    assert len(table) == len(reference.layers) + len(aligned.layers)


def test_layers_table_carries_settings(reference):
    table = report.layers_table([reference])
    assert table["settings"].iloc[0] == figures.settings_text(reference.manifest)


def test_layers_table_identifies_run(reference):
    table = report.layers_table([reference])
    assert list(table.columns[:3]) == ["run_id", "label", "model_source"]


def test_table_csv_round_trip(reference):
    table = report.layers_table([reference])
    restored = pd.read_csv(io.BytesIO(report.table_csv(table)))
    assert restored["alpha_status"].tolist() == table["alpha_status"].tolist()


def test_table_parquet_round_trip(reference):
    table = report.layers_table([reference])
    restored = pd.read_parquet(io.BytesIO(report.table_parquet(table)))
    pd.testing.assert_frame_equal(restored, table)


def test_report_escapes_label(audit_html):
    assert XSS_LABEL not in audit_html


def test_report_shows_escaped_label(audit_html):
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in audit_html


def test_report_has_no_external_reference(audit_html):
    assert external_resources(audit_html) == []


def test_report_inlines_plotly_once(audit_html):
    assert audit_html.count("* plotly.js v") == 1


def test_resource_finder_detects_cdn_script():
    assert external_resources('<script src="https://cdn.plot.ly/plotly.min.js"></script>') != []


def test_report_has_every_figure(audit_html):
    assert audit_html.count("Plotly.newPlot(") == 2


def test_report_states_verdict(audit_html, reference, aligned):
    sentence = compare_runs(reference, aligned).summary.sentence
    assert sentence.split(":")[0] in audit_html


def test_report_lists_provenance(audit_html, reference):
    for value in (reference.manifest["model"]["fingerprint"], reference.manifest["prompts"]["sha256"], "transformers 5.25"):
        assert value in audit_html


def test_report_blanks_failed_alpha(audit_html):
    assert "too_few" in audit_html


def test_report_without_comparison(reference, tmp_path):
    page = report.build_report([reference], [("profiles", figures.profile_figure([reference]))])
    assert "Headline" not in page


def test_report_file_opens_as_html(audit_html, tmp_path):
    path = Path(tmp_path / "report.html")
    path.write_text(audit_html, encoding="utf-8")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
