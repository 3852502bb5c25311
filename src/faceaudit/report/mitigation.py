"""The report's "What would reduce the differential": the cross-validated mitigations, in numbers and words.

Read from ``results.json``'s ``mitigation`` section (:func:`faceaudit.audit.run.run_mitigation`). The
words follow the engine comparison (:mod:`faceaudit.report.comparison`): a group gains or loses, and a
summary measure is said to change, only when the paired 95% interval of the change (mitigated minus
unmitigated) excludes zero. Every mitigated system is measured on held-out people at its own global
threshold for the target FMR, so the accuracy cost is the change in TAR at that FMR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from faceaudit.report.comparison import MEASURES, points
from faceaudit.report.findings import fmt_rate
from faceaudit.report.summary import md_cell, md_text

METHOD_TITLES = {
    "group_thresholds": "Group thresholds",
    "fsn": "Fair Score Normalization (FSN)",
    "faircal": "FairCal",
}
METHOD_SOURCES = {
    "group_thresholds": "one threshold per group for the same target FMR; needs each person's group at decision time",
    "fsn": "Terhörst et al. 2020: k-means clusters of the embeddings, per-cluster thresholds, scores shifted towards "
           "the global threshold; no labels at decision time",
    "faircal": "Salvador et al. 2022 (ICLR): k-means clusters, a beta calibration per cluster, a pair's probability "
               "from both images' clusters; no labels at decision time",
}
#: Summary measures shown, in this order (accuracy STD is in results.json).
SHOWN_MEASURES = ("fpd", "fnd", "ir", "fdr", "garbe", "ser")


def caveats(folds: int, seed: int, bootstrap: bool) -> list[str]:
    """What every reader of the mitigation figures must know, in words."""
    out = [
        "Group thresholds need each person's demographic group at decision time, which is often unlawful to collect "
        "or use (for example, special-category data under GDPR article 9): they are a what-if, not a mitigation to "
        "deploy. FSN and FairCal need no labels at decision time; they use clusters of the embeddings.",
        f"Cross-validated on held-out people: people were split into {folds} folds (seed {seed}); each fold's "
        "mitigation was fitted on the other folds' people only and measured on all pairs among the held-out fold's "
        "people, and the counts were summed over the folds. No person was both fitted on and measured.",
        "Each system, mitigated or not, is measured at its own global threshold for the target FMR, set on the "
        "held-out people's impostor pairs; the accuracy cost is the change in TAR (genuine pairs accepted) at that "
        "FMR. The 'before' figures are the unmitigated system measured the same way (pairs within each held-out "
        "fold), so they differ somewhat from the rates elsewhere in this report, which use all pairs.",
    ]
    if bootstrap:
        out.append("The intervals resample the held-out people (the same people for both systems) and hold each "
                   "fold's calibration and thresholds fixed: they show how much the result depends on which people "
                   "were measured, not how much the calibration itself would vary with other calibration people. A "
                   "change is stated only when its 95% interval excludes zero.")
    else:
        out.append("No intervals were computed ([uncertainty] bootstrap = 0), so no change is claimed.")
    return out


def _interval(ci: Sequence[float | None] | None) -> tuple[float, float] | None:
    if not ci or ci[0] is None or ci[1] is None:
        return None
    return float(ci[0]), float(ci[1])


@dataclass(frozen=True)
class RateRow:
    """One group's FMR and FNMR before and after one method."""

    group: str
    fmr_before: float | None
    fmr_before_ci: tuple[float, float] | None
    fmr_after: float | None
    fmr_after_ci: tuple[float, float] | None
    fmr_diff: float | None
    fmr_diff_ci: tuple[float, float] | None
    fmr_call: str
    fnmr_before: float | None
    fnmr_before_ci: tuple[float, float] | None
    fnmr_after: float | None
    fnmr_after_ci: tuple[float, float] | None
    fnmr_diff: float | None
    fnmr_diff_ci: tuple[float, float] | None
    fnmr_call: str


@dataclass(frozen=True)
class MeasureRow:
    key: str
    name: str
    before: float | None
    before_ci: tuple[float, float] | None
    after: float | None
    after_ci: tuple[float, float] | None
    diff: float | None
    diff_ci: tuple[float, float] | None
    call: str
    verdict: str


@dataclass
class MethodView:
    """One method at one target FMR: refused with its reason, or its before/after figures and findings."""

    method: str
    title: str
    source: str
    target_fmr: float
    refused: dict[str, Any] | None = None
    rows: list[RateRow] = field(default_factory=list)
    measures: list[MeasureRow] = field(default_factory=list)
    tar_before: float | None = None
    tar_before_ci: tuple[float, float] | None = None
    tar_after: float | None = None
    tar_after_ci: tuple[float, float] | None = None
    tar_diff: float | None = None
    tar_diff_ci: tuple[float, float] | None = None
    tar_call: str = "not computed"
    fmr_before: float | None = None  # overall, over every held-out impostor pair
    fmr_after: float | None = None
    gains: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)

    def sentences(self) -> list[str]:
        """The findings in plain words (group gains and losses, the accuracy cost, the summary measures)."""
        if self.refused is not None:
            return [f"{self.title} was not measured at FMR {self.target_fmr:g}: {self.refused['message']} "
                    f"(reason: {self.refused['reason']})."]
        out = []
        if self.gains:
            out.append("Gain (the 95% interval of the change is below zero): " + "; ".join(self.gains) + ".")
        if self.losses:
            out.append("Lose (the 95% interval of the change is above zero): " + "; ".join(self.losses) + ".")
        if not self.gains and not self.losses:
            out.append("No group's false match or false non-match rate changes clearly (every 95% interval includes "
                       "zero, or none was computed).")
        cost = (f"Accuracy: TAR {fmt_rate(self.tar_before)} before, {fmt_rate(self.tar_after)} after "
                f"(change {points(self.tar_diff)}")
        cost += f", 95% interval {ci_points(self.tar_diff_ci)})" if self.tar_diff_ci else ", no interval)"
        cost += {"lower": ": a clear accuracy cost.", "higher": ": clearly more accurate."}.get(
            self.tar_call, ": no clear change in accuracy.")
        out.append(cost)
        moved = [m for m in self.measures if m.call in ("lower", "higher")]
        if moved:
            out.append("Summary measures that change clearly: " + "; ".join(
                f"{m.name} {_num(m.before)} to {_num(m.after)} ({m.verdict})" for m in moved) + ".")
        else:
            out.append("No summary measure of the differential changes clearly.")
        return out


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def ci_points(ci: Sequence[float] | None) -> str:
    """An interval of a change of rates in percentage points: '−1.33 to −0.111 points'."""
    return "n/a" if ci is None else f"{points(ci[0]).removesuffix(' points')} to {points(ci[1])}"


def _rate_change(group: str, kind: str, before: float | None, after: float | None, diff: float | None,
                 ci: tuple[float, float] | None) -> str:
    name = "false match rate" if kind == "fmr" else "false non-match rate"
    interval = "" if ci is None else f", 95% interval {ci_points(ci)}"
    return f"{group} {name} {fmt_rate(before)} to {fmt_rate(after)} ({points(diff)}{interval})"


def method_view(entry: dict[str, Any], base: dict[str, Any]) -> MethodView:
    """The view of one method's entry of an operating point, against that point's unmitigated system."""
    name = entry["method"]
    view = MethodView(method=name, title=METHOD_TITLES.get(name, name), source=METHOD_SOURCES.get(name, ""),
                      target_fmr=entry["target_fmr"], refused=entry.get("refused"))
    system, diff = entry.get("system"), entry.get("difference")
    if view.refused is not None or system is None or diff is None:
        if view.refused is None:
            view.refused = {"reason": "not_measured", "message": "no result was recorded"}
        return view
    before = {g["group"]: g for g in base["groups"]}
    after = {g["group"]: g for g in system["groups"]}
    for d in diff["groups"]:
        b, a = before[d["group"]], after[d["group"]]
        row = RateRow(
            group=d["group"], fmr_before=b["fmr"], fmr_before_ci=_interval(b["fmr_ci"]), fmr_after=a["fmr"],
            fmr_after_ci=_interval(a["fmr_ci"]), fmr_diff=d["fmr_diff"], fmr_diff_ci=_interval(d["fmr_diff_ci"]),
            fmr_call=d["fmr_call"], fnmr_before=b["fnmr"], fnmr_before_ci=_interval(b["fnmr_ci"]),
            fnmr_after=a["fnmr"], fnmr_after_ci=_interval(a["fnmr_ci"]), fnmr_diff=d["fnmr_diff"],
            fnmr_diff_ci=_interval(d["fnmr_diff_ci"]), fnmr_call=d["fnmr_call"])
        view.rows.append(row)
        for kind in ("fmr", "fnmr"):
            c = getattr(row, f"{kind}_call")
            text = _rate_change(row.group, kind, getattr(row, f"{kind}_before"), getattr(row, f"{kind}_after"),
                                getattr(row, f"{kind}_diff"), getattr(row, f"{kind}_diff_ci"))
            if c == "lower":
                view.gains.append(text)
            elif c == "higher":
                view.losses.append(text)
    sb, sa = base["summary"], system["summary"]
    for k in SHOWN_MEASURES:
        s = diff["summary"][k]
        fairer = s.get("fairer")
        verdict = ("no clear change" if s["call"] == "no clear difference" else "not computed"
                   if s["call"] == "not computed" else "smaller differential" if fairer == name
                   else "larger differential")
        view.measures.append(MeasureRow(
            key=k, name=MEASURES[k].split(" (")[0], before=sb.get(k), before_ci=_interval((sb.get("ci") or {}).get(k)),
            after=sa.get(k), after_ci=_interval((sa.get("ci") or {}).get(k)), diff=s["diff"],
            diff_ci=_interval(s["ci"]), call=s["call"], verdict=verdict))
    tar = diff["tar"]
    view.tar_before, view.tar_before_ci = base["tar"], _interval(base["tar_ci"])
    view.tar_after, view.tar_after_ci = system["tar"], _interval(system["tar_ci"])
    view.tar_diff, view.tar_diff_ci, view.tar_call = tar["diff"], _interval(tar["ci"]), tar["call"]
    view.fmr_before, view.fmr_after = base["fmr"], system["fmr"]
    return view


@dataclass
class TargetView:
    target_fmr: float
    methods: list[MethodView]


@dataclass
class AnalysisView:
    attributes: list[str]
    title: str
    refused: dict[str, Any] | None
    targets: list[TargetView]
    skipped: list[dict[str, Any]]
    folds: list[dict[str, Any]]
    notes: list[str]


@dataclass
class MitigationView:
    """Everything the section shows; ``asked`` is False when no mitigation was asked for."""

    asked: bool
    methods: list[str] = field(default_factory=list)
    refused: dict[str, Any] | None = None
    analyses: list[AnalysisView] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    folds: int = 0
    seed: int = 0
    replicates: int = 0


def mitigation_view(results: dict[str, Any]) -> MitigationView:
    """The section's contents from a results document (an empty view when it has no ``mitigation``)."""
    doc = results.get("mitigation")
    if not doc:
        return MitigationView(asked=False)
    view = MitigationView(asked=True, methods=list(doc["methods"]), refused=doc.get("refused"), folds=doc["folds"],
                          seed=doc["seed"], replicates=doc["replicates"],
                          caveats=caveats(doc["folds"], doc["seed"], doc["replicates"] > 0))
    for a in doc.get("analyses", []):
        res = a.get("result")
        targets = []
        if res is not None:
            for op in res["operating_points"]:
                targets.append(TargetView(op["target_fmr"], [method_view(m, op["unmitigated"]) for m in op["methods"]]))
        view.analyses.append(AnalysisView(
            attributes=list(a["attributes"]), title=" x ".join(a["attributes"]), refused=a.get("refused"),
            targets=targets, skipped=list((res or {}).get("skipped_targets", [])),
            folds=list((res or {}).get("folds", [])), notes=list((res or {}).get("notes", []))))
    return view


# ---------------------------------------------------------------- summary.md


def _md_ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{_num(ci[0])}, {_num(ci[1])}]"


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The short Markdown version: per analysis and target FMR, each method's FPD, FND and TAR before and after,
    the groups that gain and lose, refusals with reasons, and the caveats. Empty without a ``mitigation``."""
    view = mitigation_view(results)
    if not view.asked:
        return []
    t = md_text
    lines = ["## What would reduce the differential", ""]
    if view.refused is not None:
        return [*lines, f"Not measured: {t(view.refused['message'])} (reason: {t(view.refused['reason'])}).", ""]
    for a in view.analyses:
        if a.refused is not None:
            lines += [f"### By {t(a.title)}", "", f"Not measured: {t(a.refused['message'])} (reason: "
                      f"{t(a.refused['reason'])}).", ""]
            continue
        for tv in a.targets:
            lines += [f"### By {t(a.title)}, target FMR {tv.target_fmr:g}", "",
                      "| method | FPD before → after (change [95% CI]) | FND before → after (change [95% CI]) | "
                      "TAR before → after (change [95% CI]) | gain | lose |", "|---|---|---|---|---|---|"]
            for m in tv.methods:
                if m.refused is not None:
                    lines.append(f"| {md_cell(m.title)} | refused: {md_cell(m.refused['message'])} "
                                 f"({md_cell(m.refused['reason'])}) | | | | |")
                    continue
                cells = []
                for k in ("fpd", "fnd"):
                    mr = next(x for x in m.measures if x.key == k)
                    cells.append(f"{_num(mr.before)} → {_num(mr.after)} ({_num(mr.diff)}{_md_ci(mr.diff_ci)})")
                tar_ci = "" if m.tar_diff_ci is None else (
                    f" [{points(m.tar_diff_ci[0]).removesuffix(' points')}, "
                    f"{points(m.tar_diff_ci[1]).removesuffix(' points')}]")
                cells.append(f"{fmt_rate(m.tar_before)} → {fmt_rate(m.tar_after)} ({points(m.tar_diff)}{tar_ci})")
                gain = "; ".join(md_cell(g) for g in m.gains) or "none clear"
                lose = "; ".join(md_cell(g) for g in m.losses) or "none clear"
                lines.append(f"| {md_cell(m.title)} | {' | '.join(cells)} | {gain} | {lose} |")
            lines.append("")
        for s in a.skipped:
            lines.append(f"- By {t(a.title)}: target FMR {s['target_fmr']:g} not measured: {t(s['reason'])}.")
        if a.skipped:
            lines.append("")
    lines += [f"- {t(c)}" for c in view.caveats]
    lines += ["", "Per group before and after, with intervals: report.html; every number: results.json "
              "(`mitigation`).", ""]
    return lines
