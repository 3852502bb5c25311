"""The report's words: headline and limitations derived from hand-made results, checked by hand."""

from __future__ import annotations

from typing import Any

from faceaudit.report.findings import fmt_rate, fmt_times, headlines, limitations, one_in, rule_of_three_text
from faceaudit.report.summary import render_summary


def _group(name: str, fm: int, imp: int, fnm: int, gen: int, target: float,
           ci: list[float] | None = None) -> dict[str, Any]:
    attr, value = name.split("=")
    return {"group": name, "values": {attr: value}, "fmr": fm / imp if imp else None, "fmr_ci": ci,
            "false_matches": fm, "impostor_pairs": imp, "fnmr": fnm / gen if gen else None, "fnmr_ci": None,
            "false_non_matches": fnm, "genuine_pairs": gen, "fmr_vs_target": fm / imp / target if imp else None,
            "group_threshold": 0.5, "threshold_shift": 0.01}


def _results(p_value: float | None = 0.01, labels: str | None = "self-reported") -> dict[str, Any]:
    t = 1e-3
    groups = [
        _group("sex=F", 30, 10_000, 5, 200, t, [0.002, 0.004]),  # 3x the target
        _group("sex=M", 0, 20_000, 0, 300, t, [0.0, 0.00015]),  # no errors at all
        _group("sex=X", 0, 0, 0, 0, t),  # one person: no pairs
        _group("sex=unknown", 2, 500, 1, 10, t),
    ]
    counts = [{"group": g["group"], "values": g["values"], "subjects": s, "images": i, "failed_to_enrol": f,
               "genuine_pairs": g["genuine_pairs"], "impostor_pairs": g["impostor_pairs"]}
              for g, s, i, f in zip(groups, [25, 200, 1, 20], [350, 500, 1, 30], [20, 0, 0, 0], strict=True)]
    return {
        "settings": {"impostor_pairs": "all", "pairs_mode": "all", "scores": "cosine", "skipped_targets": [
            {"target_fmr": 1e-6, "reason": "too few pairs"}]},
        "uncertainty": {"method": "bootstrap"},
        "analyses": [{"attributes": ["sex"], "groups": [{"group": g["group"], "values": g["values"]} for g in groups],
                      "counts": counts, "genuine_pairs_across_groups": 4,
                      "operating_points": [{"target_fmr": t, "threshold": 0.36, "threshold_exact": True,
                                            "fmr": 0.00104, "fnmr": 0.012, "groups": groups,
                                            "summary": {"fpd": 7.5},
                                            "permutation_test": None if p_value is None else
                                            {"fpd_p_value": p_value}}]}],
        "audit": {"title": "t", "dataset": {"labels": labels, "min_subjects": 30, "images": 881, "subjects": 371,
                                            "enrolled": 861, "name": "d"},
                  "system": {"name": "s", "kind": "engine"},
                  "left_out": [{"what": "images", "item": "failed to enrol", "count": 20, "reason": "no_face",
                                "examples": []}]},
    }


def test_number_words() -> None:
    assert fmt_rate(0.0023) == "0.23%" and fmt_rate(2.3e-6) == "0.00023%" and fmt_rate(0) == "0%"
    assert fmt_rate(5e-9) == "0.0000005%" and fmt_times(1.5e-5) == "0.000015x"  # never scientific notation
    assert fmt_rate(None) == "n/a" and fmt_rate(0.5) == "50.0%"
    assert fmt_times(2.326) == "2.3x" and fmt_times(41.2) == "41x" and one_in(1e-4) == "1 in 10,000"
    assert rule_of_three_text(20_000) == "below 0.015% in 20,000 pairs"
    assert rule_of_three_text(1) == "no bound worth stating from 1 pair"


def test_headline_ranks_comparable_groups_only() -> None:
    (h,) = headlines(_results())
    assert h.worst is not None and h.best is not None
    assert (h.worst.group, h.best.group) == ("sex=F", "sex=M")  # X has no pairs, unknown is not ranked
    assert h.worst.times_target == 3.0 and h.worst.times_target_ci == [2.0, 4.0]
    text = " ".join(h.sentences())
    assert "1 in 1,000" in text and "25 people, 3x the promised rate (0.3%; 95% interval 2x to 4x)" in text
    assert "none seen: below 0.015% in 20,000 pairs" in text  # rule of three for M
    assert "is 7.5 times the smallest (FPD" in text and "p = 0.01: unlikely to be chance" in text
    assert "at a score of at least 0.36" in text
    assert "highest sex=F 2.5%" in text and "lowest sex=M 0%" in text


def test_chance_wording_without_a_test() -> None:
    (h,) = headlines(_results(p_value=None))
    text = " ".join(h.sentences())
    assert "sex=F has false matches where none were seen for sex=M. Their intervals do not overlap" in text
    r = _results(p_value=None)
    r["analyses"][0]["operating_points"][0]["groups"][1].update(
        false_matches=10, fmr=10 / 20_000, fmr_vs_target=0.5, fmr_ci=[0.0003, 0.0008])
    (h,) = headlines(r)
    assert "6 times the false match rate" in " ".join(h.sentences())
    assert "Their intervals do not overlap" in " ".join(h.sentences())  # 0.002 > 0.0008


def test_limitations_from_the_numbers() -> None:
    kinds = [x["kind"] for x in limitations(_results())]
    assert "labels" not in kinds  # the labels' source was stated
    for kind in ("target_skipped", "unknown_label", "one_subject", "small_group", "no_genuine", "enrolment",
                 "inconsistent_labels", "zero_errors", "left_out"):
        assert kind in kinds, kind
    texts = {x["kind"]: x["text"] for x in limitations(_results(labels=None))}
    assert "not stated" in texts["labels"]
    assert "sex=X has a single person" in texts["one_subject"]
    assert "30 images (3.4%) of 20 people have no sex label" in texts["unknown_label"]
    assert "20 of 350 images of sex=F (5.7%) failed to enrol" in texts["enrolment"]
    zero = [x["text"] for x in limitations(_results()) if x["kind"] == "zero_errors"]
    assert any("no false match was observed for sex=M (below 0.015% in 20,000 pairs)" in z for z in zero)


def test_summary_markdown_has_the_tables() -> None:
    md = render_summary(_results(), {"faceaudit_version": "0", "seed": 0, "files": {}, "engine": None})
    assert "| sex=F | 0.3% [0.2%, 0.4%] | 3x [2x, 4x] | 2.5% | 10,000 / 200 |" in md
    assert "## Limitations" in md and "## Provenance" in md


def test_ties_single_groups_and_distances() -> None:
    r = _results()
    op = r["analyses"][0]["operating_points"][0]
    op["groups"][1].update(false_matches=60, fmr=0.003, fmr_vs_target=3.0)  # M now equals F
    assert "All 2 comparable groups have the same false match rate, 0.3%" in " ".join(headlines(r)[0].sentences())
    one = _results()
    a = one["analyses"][0]
    a["groups"], a["counts"] = a["groups"][:1], a["counts"][:1]
    a["operating_points"][0]["groups"] = a["operating_points"][0]["groups"][:1]
    assert "There is one group (sex=F): nothing to compare it with" in " ".join(headlines(one)[0].sentences())
    dist = _results()
    dist["settings"]["score_kind"] = "negated_distance"
    assert "at a distance of at most -0.36" in " ".join(headlines(dist)[0].sentences())
    r["analyses"][0]["operating_points"][0]["fnmr"] = None
    assert "false non-matches not measured (no genuine pairs)" in headlines(r)[0].sentences()[0]
