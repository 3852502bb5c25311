"""``report.html``: one self-contained file, plain words at the top, every number below.

Rendered with Jinja2 (autoescaping on: group labels and paths come from user data) from the same
results document as ``results.json``; plots are PNGs from :mod:`faceaudit.report.figures`, embedded as
data URIs so the file opens anywhere, offline, with nothing fetched.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import jinja2

from faceaudit.report import figures
from faceaudit.report.comparison import points
from faceaudit.report.findings import fmt_rate, fmt_times, headlines, limitations
from faceaudit.report.mitigation import ci_points, mitigation_view

#: Section ids, in page order; the browser test checks that each is rendered.
SECTIONS = ("headline", "groups", "summary-measures", "cross-group", "det", "distributions", "threshold-shift",
            "mitigation", "enrolment", "composition", "limitations", "left-out", "method", "provenance")


def _slug(attrs: list[str]) -> str:
    return "-".join(attrs)


def _plots(analysis: dict[str, Any]) -> dict[str, str]:
    """Every plot of one analysis as a data URI."""
    draw = {
        "fmr-vs-target": figures.fmr_vs_target, "cross-group": figures.cross_group_heatmap, "det": figures.det_curves,
        "distributions": figures.score_distributions, "threshold-shift": figures.threshold_shift,
        "enrolment": figures.enrolment,
    }
    return {name: figures.png_data_uri(fn(analysis)) for name, fn in draw.items()}


def report_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: resources.files("faceaudit.report").joinpath("templates", name).read_text()),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["rate"] = fmt_rate
    env.filters["times"] = fmt_times
    env.filters["points"] = points
    env.filters["points_ci"] = ci_points
    env.filters["num"] = lambda v: "n/a" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
    return env


def render_html(results: dict[str, Any], provenance: dict[str, Any], config_toml: str) -> str:
    """The report page for a results document (with its ``audit`` section) and provenance."""
    analyses = []
    heads = headlines(results)
    for a in results["analyses"]:
        mine = [h for h in heads if h.attributes == a["attributes"]]
        analyses.append({"data": a, "slug": _slug(a["attributes"]), "title": " x ".join(a["attributes"]),
                         "headlines": mine, "plots": _plots(a),
                         "counts": {c["group"]: c for c in a["counts"]}})
    return report_environment().get_template("report.html.j2").render(
        results=results, audit=results.get("audit") or {}, provenance=provenance, analyses=analyses,
        limitations=limitations(results), config_toml=config_toml, sections=SECTIONS,
        mitigation=mitigation_view(results), provenance_json=pretty_json(provenance))


def pretty_json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=1)
