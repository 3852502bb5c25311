"""What the report says in words: the headline per target FMR and the limitations, from results.json.

Everything here is derived from the numbers of a results document (``schemas/results.schema.json``
with its ``audit`` section), so the HTML report and ``summary.md`` state the same findings. Rules:

- Worst and best group at a target FMR: highest and lowest FMR among *comparable* groups, those with
  a known label and enough impostor pairs that at least ``MIN_EXPECTED_FALSE_MATCHES`` false matches
  are expected at the target (the others are reported, not ranked).
- "times the promised rate" = group FMR / target FMR, its interval the FMR interval / target.
- A zero count of errors in n trials is reported with the rule-of-three bound 3/n (95% one-sided).
- A group is small when it has fewer subjects than ``audit.dataset.min_subjects``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceaudit.metrics.rates import MIN_EXPECTED_FALSE_MATCHES
from faceaudit.scoring.groups import UNKNOWN

#: An interval whose high end is this many times its low end (or that starts at zero although errors
#: were seen) is flagged as wide.
WIDE = 10.0


def _significant(x: float, digits: int) -> str:
    """``digits`` significant digits, never in scientific notation (5e-07 -> '0.0000005')."""
    return str(np.format_float_positional(x, precision=digits, unique=False, fractional=False, trim="-"))


def fmt_rate(x: float | None) -> str:
    """A rate for people: 0.0023 -> '0.23%', 2.3e-06 -> '0.00023%', 0 -> '0%'; None -> 'n/a'."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0%"
    pct = x * 100
    return f"{_significant(pct, 2)}%" if pct < 0.1 else f"{pct:.3g}%" if pct < 10 else f"{pct:.1f}%"


def fmt_times(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return "0x" if x == 0 else f"{_significant(x, 2)}x" if x < 10 else f"{x:.0f}x"


def rule_of_three_text(n: int) -> str:
    """The rule-of-three bound on a rate after zero errors in ``n`` trials, in words."""
    if n < 3:
        return f"no bound worth stating from {n} pair{'s' if n != 1 else ''}"
    return f"below {fmt_rate(3 / n)} in {n:,} pairs"


def one_in(rate: float) -> str:
    """0.001 -> '1 in 1,000'."""
    return f"1 in {round(1 / rate):,}"


def _known(group: dict[str, Any]) -> bool:
    return UNKNOWN not in group["values"].values()


UNMEASURED = {
    "fnmr": "This data cannot measure who is wrongly rejected: no group has genuine pairs (two usable photos of "
            "one person), as in datasets with one photo per person. It measures false matches only: FPD and the false "
            "match parts of FDR and GARBE are given; FND, IR, SER and the combined FDR and GARBE are not measured.",
    "fmr": "This data cannot measure false match rates by group: no group has impostor pairs (two different "
           "people in the same group). It measures false non-matches only: FND and the false non-match "
           "parts of FDR and GARBE are given; FPD, IR, SER and the combined FDR and GARBE are not measured.",
}


@dataclass(frozen=True)
class GroupRate:
    group: str
    fmr: float | None
    fmr_ci: list[float] | None
    times_target: float | None
    times_target_ci: list[float] | None
    fnmr: float | None
    fnmr_ci: list[float] | None
    false_matches: int
    impostor_pairs: int
    false_non_matches: int
    genuine_pairs: int
    subjects: int


@dataclass(frozen=True)
class Headline:
    attributes: list[str]
    target_fmr: float
    threshold: float
    threshold_exact: bool
    fmr: float | None
    fnmr: float | None
    groups: list[GroupRate]
    worst: GroupRate | None
    best: GroupRate | None
    fpd: float | None
    fpd_p_value: float | None
    ranked: frozenset[str]  # the comparable groups: a known label and enough impostor pairs
    known: frozenset[str]  # groups with a known label
    distance: bool = False  # scores were distances, negated: the threshold is shown as a distance
    unmeasured: tuple[str, ...] = ()  # sides ("fmr", "fnmr") no group has pairs for (summary.py)

    def threshold_words(self) -> str:
        if self.distance:
            return f"a distance of at most {-self.threshold:.4g}"
        return f"a score of at least {self.threshold:.4g}"

    def sentences(self) -> list[str]:
        """The headline in plain words."""
        t = self.target_fmr
        fnmr = ("false non-matches not measured (no genuine pairs)" if self.fnmr is None
                else f"false non-matches {fmt_rate(self.fnmr)} of genuine pairs")
        out = [f"Two photos are declared the same person at {self.threshold_words()}, set so that {one_in(t)} "
               f"comparisons of two different people match (target false match rate {t:g}) over everyone in the "
               f"test. Overall: false matches {fmt_rate(self.fmr)} of impostor pairs, {fnmr}."]
        out.append(self._fmr_sentences())
        fn = [g for g in self.groups if g.group in self.known and g.fnmr is not None and g.genuine_pairs]
        if len(fn) >= 2:
            hi = max(fn, key=lambda g: g.fnmr or 0.0)
            lo = min(fn, key=lambda g: g.fnmr or 0.0)
            if hi.fnmr == lo.fnmr:
                out.append(f"Genuine pairs wrongly rejected (false non-match rate): {fmt_rate(hi.fnmr)} in every "
                           "group.")
            else:
                out.append(f"Genuine pairs wrongly rejected (false non-match rate): highest {hi.group} "
                           f"{fmt_rate(hi.fnmr)}{_ci_text(hi.fnmr_ci)}, lowest {lo.group} {fmt_rate(lo.fnmr)}"
                           f"{_ci_text(lo.fnmr_ci)}.")
        out += [UNMEASURED[side] for side in self.unmeasured]
        return [x for x in out if x]

    def _fmr_sentences(self) -> str:
        if len(self.known) == 1:
            return f"There is one group ({next(iter(self.known))}): nothing to compare it with."
        if self.worst is None or self.best is None or len(self.ranked) < 2:
            return ("Fewer than two groups with a known label have enough impostor pairs to measure this target "
                    f"(at least {MIN_EXPECTED_FALSE_MATCHES} false matches expected): no comparison between groups.")
        w, b = self.worst, self.best
        if w.fmr == b.fmr:
            return f"All {len(self.ranked)} comparable groups have the same false match rate, {fmt_rate(w.fmr)}."
        text = f"Most false matches: {w.group}, {_times_phrase(w)}. Fewest: {b.group}, {_times_phrase(b)}. "
        if w.fmr and b.fmr:
            text += f"{w.group} has {w.fmr / b.fmr:.2g} times the false match rate of {b.group}. "
        else:
            text += f"{w.group} has false matches where none were seen for {b.group}. "
        return text + _chance(self.fpd, self.fpd_p_value, w.fmr_ci, b.fmr_ci) + "."


def _chance(fpd: float | None, p: float | None, worst: list[float] | None, best: list[float] | None) -> str:
    """Whether the spread could be chance: the permutation test when there is one, else the intervals."""
    if p is not None and fpd is not None:
        verdict = "unlikely to be chance" if p < 0.05 else "could be chance"
        return (f"Across all groups with pairs, the largest false match rate is {fpd:.2g} times the smallest "
                f"(FPD, zero rates at their rule-of-three bound); shuffling the labels between people gives a "
                f"spread this large with probability p = {p:.2g}: {verdict}")
    if worst is not None and best is not None:
        return ("Their intervals do not overlap" if worst[0] > best[1]
                else "Their intervals overlap, so the gap may be chance")
    return "No interval or test was computed, so whether the gap is chance is not known"


def _ci_text(ci: list[float] | None) -> str:
    return "" if ci is None else f" ({fmt_rate(ci[0])} to {fmt_rate(ci[1])})"


def _times_phrase(g: GroupRate) -> str:
    if g.times_target is None:
        return "no impostor pairs"
    text = f"{g.subjects:,} people, {fmt_times(g.times_target)} the promised rate ({fmt_rate(g.fmr)}"
    if g.times_target_ci is not None:
        text += f"; 95% interval {fmt_times(g.times_target_ci[0])} to {fmt_times(g.times_target_ci[1])}"
    if g.false_matches == 0:
        text += f"; none seen: {rule_of_three_text(g.impostor_pairs)}"
    return text + ")"


def headlines(results: dict[str, Any]) -> list[Headline]:
    """One headline per analysis and target FMR, in the results' order."""
    distance = (results.get("settings") or {}).get("score_kind") == "negated_distance"
    out = []
    for a in results["analyses"]:
        known = {g["group"] for g in a["groups"] if _known(g)}
        people = {c["group"]: c["subjects"] for c in a["counts"]}
        for op in a["operating_points"]:
            t = op["target_fmr"]
            rates = []
            for g in op["groups"]:
                ci = g.get("fmr_ci")
                rates.append(GroupRate(
                    group=g["group"], fmr=g["fmr"], fmr_ci=ci, times_target=g["fmr_vs_target"],
                    times_target_ci=None if ci is None else [ci[0] / t, ci[1] / t], fnmr=g["fnmr"],
                    fnmr_ci=g.get("fnmr_ci"), false_matches=g["false_matches"], impostor_pairs=g["impostor_pairs"],
                    false_non_matches=g["false_non_matches"], genuine_pairs=g["genuine_pairs"],
                    subjects=people.get(g["group"], 0)))
            ranked = [r for r in rates if r.group in known and r.fmr is not None
                      and r.impostor_pairs * t >= MIN_EXPECTED_FALSE_MATCHES]
            perm = op.get("permutation_test") or {}
            out.append(Headline(
                attributes=a["attributes"], target_fmr=t, threshold=op["threshold"],
                threshold_exact=op["threshold_exact"], fmr=op["fmr"], fnmr=op["fnmr"], groups=rates,
                worst=max(ranked, key=lambda r: r.fmr or 0.0) if ranked else None,
                best=min(ranked, key=lambda r: r.fmr or 0.0) if ranked else None,
                fpd=(op.get("summary") or {}).get("fpd"), fpd_p_value=perm.get("fpd_p_value"),
                ranked=frozenset(r.group for r in ranked), known=frozenset(known), distance=distance,
                unmeasured=tuple((op.get("summary") or {}).get("unmeasured") or ())))
    return out


def limitations(results: dict[str, Any]) -> list[dict[str, str]]:
    """Limitations worked out from the numbers, each ``{"kind", "text"}``, most important first."""
    audit = results.get("audit") or {}
    ds = audit.get("dataset") or {}
    min_subjects = int(ds.get("min_subjects", 30))
    out: list[dict[str, str]] = []

    def add(kind: str, text: str) -> None:
        out.append({"kind": kind, "text": text})

    if not ds.get("labels"):
        add("labels", "The source of the demographic labels was not stated ([dataset] labels): who assigned them, "
                      "and how, decides what the groups mean. Treat the groups as unverified.")
    unc = results.get("uncertainty") or {}
    if not unc.get("method"):
        add("no_intervals", "No confidence intervals were computed: " + str(unc.get("note", "")).rstrip(".") +
            ". Differences between groups may be chance.")
    for s in (results.get("settings") or {}).get("skipped_targets", []):
        add("target_skipped", f"Target FMR {s['target_fmr']:g} was not evaluated: {s['reason']}.")
    settings = results.get("settings") or {}
    if settings.get("pairs_mode") == "sample":
        add("sampled", "Impostor pairs were sampled: " + settings["impostor_pairs"] + ".")
    if settings.get("pairs_mode") == "score_file":
        add("score_file", "The score file is taken as given: a pair listed twice (in either order) counts twice, "
                          "and pairs it does not list are not compared.")
    for a in results["analyses"]:
        _analysis_limitations(a, min_subjects, add)
    for item in audit.get("left_out", []):
        if item["what"] == "analysis":
            add("left_out", f"Left out: the analysis by {item['item']} ({item['reason']}).")
        else:
            add("left_out", f"Left out: {item['count']:,} {item['item']} ({item['reason']}).")
    return out


def _analysis_limitations(a: dict[str, Any], min_subjects: int, add: Any) -> None:
    by = " x ".join(a["attributes"])
    counts = {c["group"]: c for c in a["counts"]}
    total_images = sum(c["images"] for c in a["counts"]) or 1
    for g in a["groups"]:
        c = counts[g["group"]]
        if not _known(g):
            missing = ", ".join(k for k, v in g["values"].items() if v == UNKNOWN)
            add("unknown_label", f"{c['images']:,} images ({c['images'] / total_images:.1%}) of {c['subjects']:,} "
                f"people have no {missing} label: they form the group {g['group']}, which counts towards the overall "
                "rates but is not ranked against the labelled groups.")
            continue
        if c["impostor_pairs"] == 0:
            who = "has a single person" if c["subjects"] == 1 else "has no two people with usable images"
            add("one_subject", f"{g['group']} {who}: there are no impostor pairs within the group, so its false "
                "match rate is not measured.")
        elif c["subjects"] < min_subjects:
            add("small_group", f"{g['group']} has only {c['subjects']} people (fewer than {min_subjects}): its rates "
                "rest on few people; read its intervals rather than its point estimates.")
        if c["genuine_pairs"] == 0:
            add("no_genuine", f"{g['group']} has no genuine pairs (no person with two usable images): its false "
                "non-match rate is not measured.")
        if c["images"] and c["failed_to_enrol"] / c["images"] >= 0.05:
            add("enrolment", f"{c['failed_to_enrol']} of {c['images']} images of {g['group']} "
                f"({c['failed_to_enrol'] / c['images']:.1%}) failed to enrol and are not in its rates.")
    if a.get("genuine_pairs_across_groups"):
        add("inconsistent_labels", f"{a['genuine_pairs_across_groups']:,} genuine pairs join images of one person "
            f"labelled in different {by} groups: the labels disagree within a person.")
    for op in a["operating_points"]:
        t = op["target_fmr"]
        if not op["threshold_exact"]:
            add("binned_threshold", f"At FMR {t:g} the threshold is located within one score-histogram bin "
                "(beyond the exactly kept tail); counts at it may be off by the pairs in that bin.")
        groups = [g for g in op["groups"] if _known(g)]
        zero_fm = [f"{g['group']} ({rule_of_three_text(g['impostor_pairs'])})"
                   for g in groups if g["impostor_pairs"] and g["false_matches"] == 0]
        zero_fnm = [f"{g['group']} ({rule_of_three_text(g['genuine_pairs'])})"
                    for g in groups if g["genuine_pairs"] and g["false_non_matches"] == 0]
        for kind, found in (("false match", zero_fm), ("false non-match", zero_fnm)):
            if found:
                add("zero_errors", f"At FMR {t:g}, no {kind} was observed for {', '.join(found)}: zero observed is "
                    "not a zero rate; the bounds given are the rule of three (95%).")
        for g in groups:
            ci = g.get("fmr_ci")
            if ci is not None and g["false_matches"] > 0 and (ci[0] == 0 or ci[1] / ci[0] > WIDE):
                add("wide_interval", f"At FMR {t:g}, the interval of {g['group']}'s false match rate is wide "
                    f"({fmt_rate(ci[0])} to {fmt_rate(ci[1])}): its point estimate, and any ranking that uses it, "
                    "is uncertain.")
