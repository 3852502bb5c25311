"""``summary.md``: the audit in model-card style, for pasting into a system's documentation.

Same findings as the HTML report (:mod:`faceaudit.report.findings`), as Markdown tables.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from faceaudit.report.findings import fmt_rate, fmt_times, headlines, limitations


def md_cell(text: str) -> str:
    """Text safe in a Markdown table cell: '|' (in intersection labels) and HTML escaped."""
    return html.escape(text, quote=False).replace("|", "\\|")


def md_interval(ci: Sequence[float] | None, fmt: Any = fmt_rate) -> str:
    return "" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def render_summary(results: dict[str, Any], provenance: dict[str, Any]) -> str:
    audit = results.get("audit") or {}
    ds, system = audit.get("dataset") or {}, audit.get("system") or {}
    lines = [f"# {audit.get('title', 'Demographic audit')}", ""]
    lines += ["## System and data", "",
              f"- System: {system.get('name', 'n/a')} ({system.get('kind', 'n/a')})",
              f"- Dataset: {ds.get('name', 'n/a')}: {ds.get('images', 0):,} images of {ds.get('subjects', 0):,} "
              f"people, {ds.get('enrolled', 0):,} usable",
              f"- Demographic labels: {ds.get('labels') or 'source not stated'}",
              f"- Pairs: {results['settings']['impostor_pairs']}; scores: {results['settings']['scores']}",
              f"- Uncertainty: {(results.get('uncertainty') or {}).get('method') or 'none computed'}"]
    if results.get("protocol"):
        p = results["protocol"]
        lines.append(f"- {p['name']}: accuracy {p['accuracy']:.2%} (standard error {p['standard_error']:.2%})")
    lines += ["", "## Findings", ""]
    for h in headlines(results):
        lines.append(f"### By {' x '.join(h.attributes)}, target FMR {h.target_fmr:g}")
        lines.append("")
        lines += [f"{s}" for s in h.sentences()]
        lines += ["", "| group | FMR [95% CI] | times the target | FNMR [95% CI] | impostor / genuine pairs |",
                  "|---|---|---|---|---|"]
        for g in h.groups:
            lines.append(f"| {md_cell(g.group)} | {fmt_rate(g.fmr)}{md_interval(g.fmr_ci)} | "
                         f"{fmt_times(g.times_target)}{md_interval(g.times_target_ci, fmt_times)} | "
                         f"{fmt_rate(g.fnmr)}{md_interval(g.fnmr_ci)} | "
                         f"{g.impostor_pairs:,} / {g.genuine_pairs:,} |")
        lines.append("")
    lines += ["## Limitations", ""]
    lines += [f"- {item['text']}" for item in limitations(results)] or ["- None found in the numbers."]
    lines += ["", "## Provenance", "",
              f"- faceaudit {provenance.get('faceaudit_version')}, seed {provenance.get('seed')}",
              f"- Image listing SHA-256: {provenance.get('image_listing_sha256') or 'n/a'}",
              f"- Images Merkle root: {provenance.get('images_merkle_root') or 'n/a'}"]
    engine = provenance.get("engine") or {}
    for m in engine.get("models", []):
        lines.append(f"- Model {m['role']}: {m['file']} sha256 {m['sha256']}")
    for role, f in (provenance.get("files") or {}).items():
        lines.append(f"- {role}: {f['path']} sha256 {f['sha256']}")
    lines += ["", "Full report: report.html; numbers: results.json; rerun: `faceaudit audit --config config.toml`.", ""]
    return "\n".join(lines)
