"""The pages of a comparison report: engines side by side, and which differences are real.

Words follow :mod:`faceaudit.metrics.comparison`: a difference between an engine and the reference is
stated only when its paired bootstrap interval excludes zero; otherwise the report says there is no
clear difference (not that the engines are equal). Rates are differences in percentage points.
Fairness is judged per summary measure, lower FPD, FND, IR, GARBE, SER and accuracy STD and higher
FDR meaning smaller differences between groups. Ratio measures (FPD, FND, IR, SER) compare rates
relative to each other, gap measures (FDR, accuracy STD) in absolute terms, GARBE by a Gini
coefficient; some weigh FMR, some FNMR. When they disagree, the report says so instead of choosing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from faceaudit.report import figures
from faceaudit.report.findings import fmt_rate, one_in
from faceaudit.report.summary import md_cell, md_interval, md_text

MEASURES = {
    "fpd": "FPD (highest group FMR / lowest)",
    "fnd": "FND (highest group FNMR / lowest)",
    "ir": "IR (inequity rate, FPD and FND combined)",
    "fdr": "FDR (fairness discrepancy rate, 1 = no gap)",
    "garbe": "GARBE (Gini coefficient of the rates)",
    "ser": "SER (highest group error / lowest)",
    "accuracy_std": "accuracy STD (spread of balanced accuracy)",
}
RATIO_MEASURES = ("fpd", "fnd", "ir", "ser")


def points(x: float | None) -> str:
    """A difference of rates in percentage points: -0.00071 -> '-0.071 points'."""
    if x is None or not np.isfinite(x):
        return "n/a"
    v = 100 * x
    text = np.format_float_positional(float(f"{v:.2g}" if abs(v) < 0.1 else f"{v:.3g}"), trim="-")
    return f"{'+' if v > 0 else ''}{text} points".replace("-", "−")


def _ci_points(ci: Sequence[float] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "not computed"
    return f"{points(ci[0]).removesuffix(' points')} to {points(ci[1])}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


@dataclass
class PairFindings:
    """What one engine vs the reference shows for one analysis at one target FMR."""

    engine: str
    reference: str
    calls: list[str] = field(default_factory=list)  # sentences about groups where the interval excludes 0
    unclear: list[str] = field(default_factory=list)  # "FMR of sex=F", ...: the interval includes 0
    unmeasured: list[str] = field(default_factory=list)  # no interval: no pairs of that kind
    not_compared: str | None = None  # why no difference was tested at all
    fairness: list[str] = field(default_factory=list)
    fairer: dict[str, str] = field(default_factory=dict)  # measure -> engine judged fairer

    def sentences(self) -> list[str]:
        if self.not_compared:
            return [f"{self.engine} and {self.reference} were not compared: {self.not_compared}."]
        out = list(self.calls)
        if self.unmeasured:
            out.append(f"Not measured (no pairs of that kind, or too few people): {', '.join(self.unmeasured)}.")
        if self.unclear:
            out.append(f"No clear difference between {self.engine} and {self.reference} (the 95% interval includes "
                       f"zero) for: {', '.join(self.unclear)}.")
        out += self.fairness
        winners = set(self.fairer.values())
        if not self.fairer:
            out.append(f"No summary measure shows a clear difference in fairness between {self.engine} and "
                       f"{self.reference}.")
        elif len(winners) > 1:
            by = {w: [m for m, e in self.fairer.items() if e == w] for w in sorted(winners)}
            parts = "; ".join(f"{w} by {', '.join(ms)}" for w, ms in by.items())
            out.append(f"The measures disagree on which engine is fairer ({parts}): they weigh the groups' rates "
                       "differently (as ratios or as gaps, FMR or FNMR); read them together.")
        return out


def _rate_name(kind: str) -> str:
    return "false match rate" if kind == "fmr" else "false non-match rate"


def pair_findings(analysis: Mapping[str, Any], k: int, diff: Mapping[str, Any]) -> PairFindings:
    op = analysis["operating_points"][k]
    a, b = diff["reference"], diff["engine"]
    pf = PairFindings(engine=b, reference=a)
    if not diff.get("groups"):
        pf.not_compared = diff.get("note") or "no intervals were computed"
        return pf
    rates = {e: {g["group"]: g for g in op["engines"][e]["groups"]} for e in (a, b)}
    for g in diff["groups"]:
        for kind in ("fmr", "fnmr"):
            c = g[f"{kind}_call"]
            if c == "not computed":
                pf.unmeasured.append(f"{kind.upper()} of {g['group']}")
            elif c in ("lower", "higher"):
                ra, rb = rates[a][g["group"]][kind], rates[b][g["group"]][kind]
                pf.calls.append(f"For {g['group']}, {b}'s {_rate_name(kind)} is {c} than {a}'s: {fmt_rate(rb)} vs "
                                f"{fmt_rate(ra)} (difference {points(g[f'{kind}_diff'])}, 95% interval "
                                f"{_ci_points(g[f'{kind}_diff_ci'])}).")
            else:
                pf.unclear.append(f"{kind.upper()} of {g['group']}")
    for m, s in (diff.get("summary") or {}).items():
        if s.get("fairer") is None:
            continue
        winner = b if s["fairer"] == "b" else a
        loser = a if winner == b else b
        sa, sb = op["engines"][a]["summary"], op["engines"][b]["summary"]
        pf.fairer[m.upper() if m != "accuracy_std" else "accuracy STD"] = winner
        zero = ""
        if m in RATIO_MEASURES and any(x.get("zero_rule_fmr") or x.get("zero_rule_fnmr") for x in (sa, sb)):
            zero = " A group with no errors enters this ratio as 3/n (rule of three), so it compares bounds, not rates."
        pf.fairness.append(f"By {MEASURES[m]}, {winner} is fairer than {loser}: {b} {_num(sb.get(m))} vs {a} "
                           f"{_num(sa.get(m))} (difference {_num(s['diff'])}, 95% interval {_num(s['ci'][0])} to "
                           f"{_num(s['ci'][1])}).{zero}")
    return pf


def headline(results: Mapping[str, Any], analysis: Mapping[str, Any], k: int = 0) -> list[str]:
    """The plain-words finding of one analysis at its k-th target FMR (the first is the largest)."""
    op = analysis["operating_points"][k]
    thresholds = ", ".join(f"{e} {op['engines'][e]['threshold']:.4f}" for e in results["engines_order"])
    out = [f"At a promised false match rate of {one_in(op['target_fmr'])}, each engine at its own threshold "
           f"({thresholds}):"]
    for diff in op["differences"]:
        out += pair_findings(analysis, k, diff).sentences()
    return out


# ---------------------------------------------------------------- figures


def _axis_limit(values: Sequence[float]) -> float:
    """Right end of a rate axis in percent: room for every rate, not for the widest interval (a group of one
    or two people has an interval up to 100%, which would squash every other row to zero)."""
    top = max([v for v in values if v > 0], default=0.0)
    return 2.5 * top if top > 0 else 1.0


def rates_side_by_side(analysis: Mapping[str, Any], k: int, engines: Sequence[str]) -> bytes:
    """Each group's FMR and FNMR per engine with its 95% interval, at the k-th target FMR.

    Intervals running past the axis are cut at its end and marked with an arrow head.
    """
    op = analysis["operating_points"][k]
    labels = list(analysis["groups"])
    n = len(labels)
    with figures._figure(figures._rows_height(n, 0.45, 1.9)) as fig:
        axes = fig.subplots(1, 2, sharey=True)
        handles = []
        for col, kind in enumerate(("fmr", "fnmr")):
            ax = axes[col]
            figures._group_rows(ax, labels)
            rows_of = {name: {g["group"]: g for g in op["engines"][name]["groups"]} for name in engines}
            values = [100 * v for name in engines for g in rows_of[name].values()
                      if (v := figures._num(g.get(kind))) is not None]
            right = _axis_limit(values)
            for e, name in enumerate(engines):
                colour = figures.PALETTE[e % len(figures.PALETTE)]
                for r, lab in enumerate(labels):
                    g = rows_of[name].get(lab) or {}
                    v = figures._num(g.get(kind))
                    y = r + figures._dodge(e, len(engines))
                    if v is None:
                        continue
                    ci = figures._interval(g.get(f"{kind}_ci"))
                    if ci is not None:
                        hi = min(100 * ci[1], right)
                        ax.plot([100 * ci[0], hi], [y, y], color=colour, lw=1.6)
                        if 100 * ci[1] > right:
                            ax.plot([hi], [y], ">", color=colour, ms=5)
                    line = ax.plot([100 * v], [y], "o", color=colour, ms=6)[0]
                    if col == 0 and r == 0:
                        line.set_label(name)
                        handles.append(line)
            ax.set_xlim(0, right)
            ax.set_xlabel(f"{_rate_name(kind)} (%)")
            ax.grid(axis="x", color="#EEEEEE")
            ax.set_title("False matches" if kind == "fmr" else "False non-matches")
        fig.suptitle(f"Each engine at its own threshold for a promised FMR of {one_in(op['target_fmr'])}")
        figures._legend(fig, handles, len(handles), "engine (dot: rate; line: 95% interval, > where it goes on)")
        return figures._png(fig)


def differences_plot(analysis: Mapping[str, Any], k: int, diff: Mapping[str, Any]) -> bytes:
    """engine - reference per group with the paired 95% interval; coloured where it excludes zero."""
    labels = list(analysis["groups"])
    by = {g["group"]: g for g in diff.get("groups") or []}
    with figures._figure(figures._rows_height(len(labels), 0.45, 1.9)) as fig:
        axes = fig.subplots(1, 2, sharey=True)
        for col, kind in enumerate(("fmr", "fnmr")):
            ax = axes[col]
            figures._group_rows(ax, labels)
            ax.axvline(0, color="#555555", lw=1)
            for r, lab in enumerate(labels):
                g = by.get(lab)
                v = figures._num(g.get(f"{kind}_diff")) if g else None
                if g is None or v is None:
                    figures._na(ax, 0, r)
                    continue
                called = g[f"{kind}_call"] in ("lower", "higher")
                colour = figures.PALETTE[1] if called else "#888888"
                ci = figures._interval(g.get(f"{kind}_diff_ci"))
                if ci is not None:
                    ax.plot([100 * ci[0], 100 * ci[1]], [r, r], color=colour, lw=2)
                ax.plot([100 * v], [r], "o", color=colour, ms=6)
            ax.set_xlabel(f"{kind.upper()}: {diff['engine']} − {diff['reference']} (points)")
            ax.grid(axis="x", color="#EEEEEE")
        fig.suptitle(f"Difference per group (left of 0: {diff['engine']} errs less); orange: the 95% interval "
                     "excludes 0", fontsize=11)
        return figures._png(fig)


# ---------------------------------------------------------------- pages


SECTIONS = ("headline", "side-by-side", "differences", "fairness", "enrolment", "protocol", "limitations", "engines",
            "method", "provenance")


def _prepare(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    names = [e["name"] for e in results["engines"]]
    out = []
    for a in results["analyses"]:
        ops = []
        for k, op in enumerate(a["operating_points"]):
            ops.append({"data": op, "headline": headline({"engines_order": names}, a, k),
                        "rates_plot": figures.png_data_uri(rates_side_by_side(a, k, names)),
                        "diff_plots": [{"engine": d["engine"], "uri": figures.png_data_uri(differences_plot(a, k, d))}
                                       for d in op["differences"]] if k == 0 else []})
        out.append({"data": a, "title": " x ".join(a["attributes"]), "ops": ops})
    return out


def render_comparison_html(results: dict[str, Any], provenance: dict[str, Any], config_toml: str) -> str:
    from faceaudit.report.html import pretty_json, report_environment

    env = report_environment()
    env.filters["points"] = points
    env.filters["ci_points"] = _ci_points
    return env.get_template("comparison.html.j2").render(
        results=results, audit=results["audit"], provenance=provenance, analyses=_prepare(results),
        engines=results["engines"], names=[e["name"] for e in results["engines"]], measures=MEASURES,
        config_toml=config_toml, provenance_json=pretty_json(provenance), sections=SECTIONS)


def render_comparison_summary(results: dict[str, Any], provenance: dict[str, Any]) -> str:
    """``summary.md`` of a comparison: the findings and the side-by-side tables in Markdown."""
    audit = results["audit"]
    ds = audit["dataset"]
    names = [e["name"] for e in results["engines"]]
    t = md_text  # every user-given text (titles, engine and group names, paths) is escaped: see summary.py
    lines = [f"# {t(audit['title'])}", "", "## Engines and data", ""]
    for e in results["engines"]:
        p = e.get("protocol")
        acc = f"; {t(p['name'])} accuracy {p['accuracy']:.2%}" if p else ""
        lines.append(f"- {t(e['name'])} ({t(e['title'])}): {e['failed_to_enrol']:,} images failed to enrol{acc}")
    lines += [f"- Dataset: {t(ds['name'])}: {ds['images']:,} images of {ds['subjects']:,} people; "
              f"{ds['enrolled_by_all']:,} enrolled by every engine (all engines are measured on these)",
              f"- Demographic labels: {t(ds.get('labels') or 'source not stated')}",
              f"- Intervals: {t(results['settings']['bootstrap']['method'])} "
              f"({results['settings']['bootstrap']['replicates']} replicates)", "", "## Findings", ""]
    for a in results["analyses"]:
        for k, op in enumerate(a["operating_points"]):
            lines += [f"### By {t(' x '.join(a['attributes']))}, target FMR {op['target_fmr']:g}", ""]
            lines += [t(s) for s in headline({"engines_order": names}, a, k)]  # they quote engines and groups
            lines += ["", "| group | " + " | ".join(f"{md_cell(n)} FMR [95% CI] | {md_cell(n)} FNMR [95% CI]"
                                                     for n in names) + " |",
                      "|---|" + "---|---|" * len(names)]
            for lab in a["groups"]:
                cells = []
                for n in names:
                    g = next(x for x in op["engines"][n]["groups"] if x["group"] == lab)
                    cells.append(f"{fmt_rate(g['fmr'])}{md_interval(g['fmr_ci'])} | "
                                 f"{fmt_rate(g['fnmr'])}{md_interval(g['fnmr_ci'])}")
                lines.append(f"| {md_cell(lab)} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Limitations", ""]
    lines += [f"- {t(item['text'])}" for item in results.get("limitations") or []] or ["- None found in the numbers."]
    lines += ["", "## Provenance", "",
              f"- faceaudit {t(provenance.get('faceaudit_version'))}, seed {t(provenance.get('seed'))}",
              f"- Images Merkle root: {t(provenance.get('images_merkle_root') or 'n/a')}"]
    for name, ident in (provenance.get("engines") or {}).items():
        for m in (ident or {}).get("models", []):
            lines.append(f"- {t(name)} {t(m['role'])}: {t(m['file'])} sha256 {t(m['sha256'] or 'built in')}")
    lines += ["", "Full report: report.html (each engine's own report under engines/); numbers: results.json; "
              "rerun: `faceaudit audit --config config.toml`.", ""]
    return "\n".join(lines)

