"""Report figures: valid PNGs of the expected size, byte-for-byte deterministic, sensitive to the data,
and tolerant of every undefined (null) value a results.json may hold."""

from __future__ import annotations

import base64
import copy
import io
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pytest
from PIL import Image

from faceaudit.metrics.bootstrap import BootstrapSpec
from faceaudit.metrics.result import GroupCounts, analyse
from faceaudit.report import figures
from faceaudit.scoring.compare import compare_embeddings
from faceaudit.scoring.groups import Grouping
from faceaudit.scoring.stats import ScoreBins

Analysis = dict[str, Any]
Draw = Callable[[Analysis], bytes]

FUNCTIONS: dict[str, Draw] = {
    "fmr_vs_target": figures.fmr_vs_target,
    "cross_group_heatmap": figures.cross_group_heatmap,
    "det_curves": figures.det_curves,
    "score_distributions": figures.score_distributions,
    "threshold_shift": figures.threshold_shift,
    "enrolment": figures.enrolment,
}
WIDTH_PX = round(figures.WIDTH * figures.DPI)


def _values(label: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in label.split("|"))


def _full_group(label: str, k: int, target: float, zero_fmr: bool) -> dict[str, Any]:
    """A group's entry at the k-th operating point; ``zero_fmr``: no false match seen (FMR exactly 0)."""
    fmr = 0.0 if zero_fmr else 2.0 * target
    return {"group": label, "values": _values(label), "fmr": fmr,
            "fmr_ci": [0.0, 3 / 400] if zero_fmr else [fmr / 2, fmr * 2], "fmr_n_eff": None,
            "false_matches": round(fmr * 400), "impostor_pairs": 400, "fnmr": 0.05 * (k + 1),
            "fnmr_ci": None if zero_fmr else [0.02, 0.2], "false_non_matches": 2 * (k + 1), "genuine_pairs": 40,
            "fmr_vs_target": fmr / target, "group_threshold": 0.4 + 0.1 * k,
            "threshold_shift": -0.1 if zero_fmr else 0.05 + 0.01 * k}


def _null_group(label: str) -> dict[str, Any]:
    """A group without any pair: every rate and threshold undefined."""
    return {"group": label, "values": _values(label), "fmr": None, "fmr_ci": None, "fmr_n_eff": None,
            "false_matches": 0, "impostor_pairs": 0, "fnmr": None, "fnmr_ci": None, "false_non_matches": 0,
            "genuine_pairs": 0, "fmr_vs_target": None, "group_threshold": None, "threshold_shift": None}


def make_analysis(labels: tuple[str, ...] = ("sex=F", "sex=M|race=Black", "sex=X")) -> Analysis:
    """A small analysis: the first group ordinary, the second with FMR 0, the third ("sex=X") all null.

    The cross-group matrix has a 0 cell (first x second) and null cells (everything with the third).
    """
    edges = np.linspace(-1, 1, 21)
    centres = (edges[:-1] + edges[1:]) / 2
    thresholds = np.linspace(-1, 1, 50)
    ops = []
    for k, target in enumerate((1e-2, 1e-3)):
        groups = [_full_group(lab, k, target, zero_fmr=i == 1) if i < 2 else _null_group(lab)
                  for i, lab in enumerate(labels)]
        matrix: list[list[float | None]] = [[None] * len(labels) for _ in labels]
        for i in range(min(2, len(labels))):
            for j in range(min(2, len(labels))):
                matrix[i][j] = groups[i]["fmr"] if i == j else 0.0
        ops.append({"target_fmr": target, "threshold": 0.3 + 0.15 * k, "threshold_exact": True, "fmr": target,
                    "false_matches": 10, "impostor_pairs": 1200, "fnmr": 0.05, "groups": groups,
                    "cross_group_fmr": {"groups": list(labels), "matrix": matrix}, "permutation_test": None,
                    "summary": {}})
    counts, per_group = [], []
    for i, lab in enumerate(labels):
        full = i < 2
        counts.append({"group": lab, "values": _values(lab), "subjects": 10 if full else 0,
                       "images": 30 if full else 0, "failed_to_enrol": 3 * i if full else 0,
                       "genuine_pairs": 40 if full else 0, "impostor_pairs": 400 if full else 0})
        shift = 0.1 * i
        per_group.append({
            "group": lab, "eer": 0.05 * (i + 1) if full else None, "eer_threshold": 0.4 if full else None,
            "genuine_mean": None, "genuine_std": None, "impostor_mean": None, "impostor_std": None, "d_prime": None,
            "det": {"threshold": thresholds.tolist(),
                    "fmr": (1 - (thresholds + 1) / 2.05 - shift / 3).clip(1e-4, 1).tolist(),
                    "fnmr": (((thresholds + 1) / 2) ** 3 + shift / 10).clip(0, 1).tolist()}
            if full else {"threshold": [], "fmr": [], "fnmr": []},
            "score_histogram": {"edges": edges.tolist(),
                                "genuine": np.round(40 * np.exp(-((centres - 0.6 + shift) ** 2) / 0.02)).tolist(),
                                "impostor": np.round(400 * np.exp(-(centres**2) / 0.02)).tolist()}
            if full else None,
        })
    return {"attributes": sorted({k for lab in labels for k in _values(lab)}),
            "groups": [{"group": lab, "values": _values(lab)} for lab in labels], "counts": counts,
            "genuine_pairs_across_groups": 0, "operating_points": ops, "per_group": per_group}


@cache
def real_analysis() -> Analysis:
    """An analysis through the real statistics code: random unit vectors for 24 subjects in 2 groups."""
    rng = np.random.default_rng(7)
    subjects = np.repeat(np.arange(24), 3).astype(np.int32)
    group_of_subject = np.arange(24) % 2
    groups = group_of_subject[subjects].astype(np.int32)
    centres = rng.normal(size=(24, 16))
    emb = centres[subjects] + rng.normal(scale=0.8, size=(len(subjects), 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    grouping = Grouping(attributes=("sex",), labels=("sex=F", "sex=M"), index=groups)
    stats = compare_embeddings(emb, subjects, groups, 2, bins=ScoreBins(-1.0, 1.0, 2000), top_k=10_000, threads=1)
    counts = [GroupCounts(group=lab, values=grouping.values(g), subjects=12, images=36, failed_to_enrol=0,
                          genuine_pairs=36, impostor_pairs=36 * 33 // 2) for g, lab in enumerate(grouping.labels)]
    per_subject = np.zeros((24, 2))
    np.add.at(per_subject, (subjects, groups), 1)
    analysis = analyse(stats, grouping, counts, [0.05, 0.01], 0.5, per_subject, BootstrapSpec(replicates=20))
    out: Analysis = analysis.to_dict()
    return out


DATASETS: dict[str, Callable[[], Analysis]] = {
    "three_groups": make_analysis,
    "one_group": lambda: make_analysis(("sex=F",)),
    "real": real_analysis,
}


@cache
def rendered(name: str, dataset: str) -> bytes:
    """Each figure of each dataset drawn once per test session (drawing is most of this file's time)."""
    return FUNCTIONS[name](DATASETS[dataset]())


def open_png(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.format == "PNG"
    return img


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_a_png_of_the_expected_size_deterministic(name: str, dataset: str) -> None:
    draw, analysis = FUNCTIONS[name], DATASETS[dataset]()
    before = copy.deepcopy(analysis)
    png = rendered(name, dataset)
    img = open_png(png)
    assert img.size[0] == WIDTH_PX  # 8 inches at 100 dpi, whatever the labels (no tight bounding box)
    assert 150 <= img.size[1] <= 1100
    assert analysis == before  # the figure must not modify the results it draws
    if dataset == "three_groups":  # one dataset suffices for determinism, and keeps the file fast
        assert draw(analysis) == png  # byte-for-byte


def _set_fmr_vs_target(a: Analysis) -> None:
    a["operating_points"][0]["groups"][0]["fmr_vs_target"] = 7.0


def _set_matrix(a: Analysis) -> None:
    a["operating_points"][0]["cross_group_fmr"]["matrix"][0][1] = 1e-3


def _set_det(a: Analysis) -> None:
    a["per_group"][0]["det"]["fnmr"] = [v / 2 for v in a["per_group"][0]["det"]["fnmr"]]


def _set_histogram(a: Analysis) -> None:
    a["per_group"][0]["score_histogram"]["genuine"][15] += 30


def _set_shift(a: Analysis) -> None:
    a["operating_points"][1]["groups"][0]["threshold_shift"] = -0.2


def _set_failures(a: Analysis) -> None:
    a["counts"][0]["failed_to_enrol"] = 12


@pytest.mark.parametrize(("name", "change"), [
    ("fmr_vs_target", _set_fmr_vs_target), ("cross_group_heatmap", _set_matrix), ("det_curves", _set_det),
    ("score_distributions", _set_histogram), ("threshold_shift", _set_shift), ("enrolment", _set_failures),
])
def test_different_data_give_a_different_figure(name: str, change: Callable[[Analysis], None]) -> None:
    b = make_analysis()
    change(b)
    assert FUNCTIONS[name](b) != rendered(name, "three_groups")


def test_heatmap_draws_the_operating_point_asked_for() -> None:
    a = make_analysis()
    first, second = rendered("cross_group_heatmap", "three_groups"), figures.cross_group_heatmap(a, op_index=1)
    assert first != second
    assert figures.cross_group_heatmap(a, op_index=-1) == second
    with pytest.raises(IndexError, match="operating point 2"):
        figures.cross_group_heatmap(a, op_index=2)


def test_every_value_null_is_drawn_not_raised() -> None:
    """Beyond the schema's nulls: null lists, ragged matrices, malformed intervals and histograms."""
    a = make_analysis()
    for op in a["operating_points"]:
        op["threshold"] = op["target_fmr"] = None
        op["groups"] = [_null_group(g["group"]) for g in op["groups"]] + [{"group": "not-a-group"}]
        op["groups"][0]["fmr_ci"] = [None, 0.1]
        op["cross_group_fmr"]["matrix"] = [[None], [0.0, None, None, 5.0]]
    for pg in a["per_group"]:
        pg["eer"] = None
        pg["det"] = {"threshold": [0.1, None], "fmr": [0.5, None], "fnmr": [None]}
        pg["score_histogram"] = {"edges": [0.0, 1.0], "genuine": [1, 2], "impostor": [None]}
    a["counts"] = [{"group": "sex=F", "failed_to_enrol": None, "images": None}]
    for draw in FUNCTIONS.values():
        assert open_png(draw(a)).size[0] == WIDTH_PX
    empty: Analysis = {"groups": [], "counts": [], "operating_points": [], "per_group": []}
    for name, draw in FUNCTIONS.items():
        if name == "cross_group_heatmap":
            with pytest.raises(IndexError):
                draw(empty)
        else:
            assert open_png(draw(empty)).size[0] == WIDTH_PX


def test_row_figures_grow_with_the_number_of_groups() -> None:
    large = make_analysis(tuple(f"race=R{i}" for i in range(12)))
    for name in ("fmr_vs_target", "threshold_shift", "enrolment"):
        assert open_png(FUNCTIONS[name](large)).size[1] > open_png(rendered(name, "one_group")).size[1]


def test_png_data_uri() -> None:
    png = rendered("enrolment", "one_group")
    uri = figures.png_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png
