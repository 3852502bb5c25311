"""``summary.md``: the audit in model-card style, for pasting into a system's documentation.

Same findings as the HTML report (:mod:`faceaudit.report.findings`), as Markdown tables. Every piece of
text that can come from the user (group labels, attribute names, the title, names of systems, files and
datasets, and the sentences that quote them) goes through :func:`md_text`: Markdown renderers pass raw
HTML through, so a label such as ``<script>...`` must never reach the page as markup, nor a ``|`` split
a table row, nor ``[text](url)`` become a link.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from faceaudit.report.findings import fmt_rate, fmt_times, headlines, limitations

#: Markdown punctuation that can start markup inline (code, emphasis, links, tables, and the math that
#: GitHub renders between dollars), backslash-escaped.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|$])")
#: Line breaks (and the Unicode ones) would let a label start a new block: a heading, a list, a table row.
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")


def md_text(text: object) -> str:
    """User text made inert in Markdown: HTML escaped, Markdown punctuation backslash-escaped, on one line.

    Renders as the original characters; safe in running text and in table cells.
    """
    one_line = _LINE_BREAKS.sub(" ", str(text))
    return _MD_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))


def md_cell(text: str) -> str:
    """Text safe in a Markdown table cell (see :func:`md_text`)."""
    return md_text(text)


def md_interval(ci: Sequence[float] | None, fmt: Any = fmt_rate) -> str:
    return "" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def render_summary(results: dict[str, Any], provenance: dict[str, Any]) -> str:
    audit = results.get("audit") or {}
    ds, system = audit.get("dataset") or {}, audit.get("system") or {}
    t = md_text
    lines = [f"# {t(audit.get('title', 'Demographic audit'))}", ""]
    lines += ["## System and data", "",
              f"- System: {t(system.get('name', 'n/a'))} ({t(system.get('kind', 'n/a'))})",
              *([] if not system.get("calibration") else [
                  f"- Calibration: every score is the {t(system['calibration']['method'])} calibrated score "
                  f"(calibration sha256 `{t(system['calibration']['sha256'])}`, fitted on "
                  f"{t(system['calibration'].get('dataset') or 'an unnamed dataset')})"]),
              f"- Dataset: {t(ds.get('name', 'n/a'))}: {ds.get('images', 0):,} images of {ds.get('subjects', 0):,} "
              f"people, {ds.get('enrolled', 0):,} usable",
              f"- Demographic labels: {t(ds.get('labels') or 'source not stated')}",
              f"- Pairs: {t(results['settings']['impostor_pairs'])}; scores: {t(results['settings']['scores'])}",
              f"- Uncertainty: {t((results.get('uncertainty') or {}).get('method') or 'none computed')}"]
    if results.get("protocol"):
        p = results["protocol"]
        lines.append(f"- {t(p['name'])}: accuracy {p['accuracy']:.2%} (standard error {p['standard_error']:.2%})")
    lines += ["", "## Findings", ""]
    for h in headlines(results):
        lines.append(f"### By {t(' x '.join(h.attributes))}, target FMR {h.target_fmr:g}")
        lines.append("")
        lines += [t(s) for s in h.sentences()]  # they quote group labels
        lines += ["", "| group | FMR [95% CI] | times the target | FNMR [95% CI] | impostor / genuine pairs |",
                  "|---|---|---|---|---|"]
        for g in h.groups:
            lines.append(f"| {md_cell(g.group)} | {fmt_rate(g.fmr)}{md_interval(g.fmr_ci)} | "
                         f"{fmt_times(g.times_target)}{md_interval(g.times_target_ci, fmt_times)} | "
                         f"{fmt_rate(g.fnmr)}{md_interval(g.fnmr_ci)} | "
                         f"{g.impostor_pairs:,} / {g.genuine_pairs:,} |")
        lines.append("")
    from faceaudit.report.mitigation import summary_lines  # here: it imports this module's helpers

    lines += summary_lines(results)
    lines += ["## Limitations", ""]
    lines += [f"- {t(item['text'])}" for item in limitations(results)] or ["- None found in the numbers."]
    lines += ["", "## Provenance", "",
              f"- faceaudit {t(provenance.get('faceaudit_version'))}, seed {t(provenance.get('seed'))}",
              f"- Image listing SHA-256: {t(provenance.get('image_listing_sha256') or 'n/a')}",
              f"- Images Merkle root: {t(provenance.get('images_merkle_root') or 'n/a')}"]
    engine = provenance.get("engine") or {}
    for m in engine.get("models", []):
        lines.append(f"- Model {t(m['role'])}: {t(m['file'])} sha256 {t(m['sha256'])}")
    for role, f in (provenance.get("files") or {}).items():
        lines.append(f"- {t(role)}: {t(f['path'])} sha256 {t(f['sha256'])}")
    lines += ["", "Full report: report.html; numbers: results.json; rerun: `faceaudit audit --config config.toml`.", ""]
    return "\n".join(lines)
