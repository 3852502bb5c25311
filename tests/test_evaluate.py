"""The evaluation engine against a naive all-pairs computation, hand-checked summaries, and score files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from faceaudit.errors import InputError
from faceaudit.evaluate import evaluate_embeddings, evaluate_frame, evaluate_scores
from faceaudit.io.embeddings import write_embeddings
from faceaudit.metrics.rates import counts_at, global_threshold
from faceaudit.metrics.summary import gini, summarise
from faceaudit.scoring.compare import compare_embeddings
from faceaudit.scoring.groups import assign_groups, cell_index
from faceaudit.scoring.stats import PairStatistics, ScoreBins, coarsen


def population(n_subjects: int = 90, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Synthetic subjects with 1-4 images each, two attributes (one with unknowns), unit embeddings."""
    rng = np.random.default_rng(seed)
    rows, vecs = [], []
    for s in range(n_subjects):
        centre = rng.normal(size=32)
        sex = ["F", "M"][s % 2]
        race = ["A", "B", ""][s % 3]
        for k in range(int(rng.integers(1, 5))):
            rows.append({"path": f"{s}/{k}.jpg", "subject_id": f"s{s:03d}", "sex": sex, "race": race})
            vecs.append(centre + rng.normal(scale=0.9, size=32))
    emb = np.array(vecs, np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return pd.DataFrame(rows), emb


def naive_pairs(table: pd.DataFrame, emb: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    i, j = np.triu_indices(len(emb), k=1)
    scores = np.einsum("ij,ij->i", emb[i].astype(np.float64), emb[j].astype(np.float64))
    subj = table["subject_id"].to_numpy()
    return pd.DataFrame({"i": i, "j": j, "score": scores, "genuine": subj[i] == subj[j],
                         "ga": np.minimum(groups[i], groups[j]), "gb": np.maximum(groups[i], groups[j])})


def stats_for(table: pd.DataFrame, emb: np.ndarray, attrs: list[str], top_k: int, block: int = 16) -> PairStatistics:
    g = assign_groups(table, attrs)
    subj = np.unique(table["subject_id"], return_inverse=True)[1]
    return compare_embeddings(emb, subj, g.index, g.n_groups, top_k=top_k, row_block=block, col_block=block * 4)


def test_streamed_statistics_equal_the_naive_computation() -> None:
    table, emb = population()
    g = assign_groups(table, ["sex", "race"])
    assert "sex=F|race=unknown" in g.labels and g.n_groups == 6  # a missing label is its own group
    stats = stats_for(table, emb, ["sex", "race"], top_k=10**6)
    ref = naive_pairs(table, emb, g.index)
    gen, imp = ref[ref["genuine"]], ref[~ref["genuine"]]
    s, _, _ = stats.genuine()
    np.testing.assert_allclose(np.sort(s), np.sort(gen["score"]), atol=1e-5)
    want = np.bincount(cell_index(imp["ga"].to_numpy(), imp["gb"].to_numpy(), g.n_groups),
                       minlength=stats.impostor_hist.shape[0])
    np.testing.assert_array_equal(stats.n_impostor, want)
    np.testing.assert_allclose(np.sort(stats.tail_score)[::-1], np.sort(imp["score"])[::-1], atol=1e-5)
    for target in (1e-1, 1e-2):
        t = global_threshold(stats, target)
        assert t.exact and t.fmr <= target
        c = counts_at(stats, t)
        match = imp["score"] >= t.value
        assert t.false_matches == int(match.sum())
        per_cell = np.bincount(cell_index(imp["ga"][match].to_numpy(), imp["gb"][match].to_numpy(), g.n_groups),
                               minlength=len(want))
        np.testing.assert_array_equal(c.false_matches, per_cell)
        for k in range(g.n_groups):
            own = gen[(gen["ga"] == k) & (gen["gb"] == k)]
            assert c.genuine_pairs[k] == len(own)
            assert c.false_non_matches[k] == int((own["score"] < t.value).sum())


def test_small_tail_falls_back_to_bins_within_one_bin() -> None:
    table, emb = population(seed=1)
    exact = stats_for(table, emb, ["sex"], top_k=10**6)
    binned = stats_for(table, emb, ["sex"], top_k=5)
    np.testing.assert_array_equal(exact.impostor_hist, binned.impostor_hist)
    for target in (1e-1, 3e-2):
        te, tb = global_threshold(exact, target), global_threshold(binned, target)
        assert te.exact and not tb.exact
        assert abs(tb.value - te.value) <= exact.bins.width + 1e-7
        assert tb.fmr <= target
        assert counts_at(binned, tb).false_matches.sum() == tb.false_matches  # cells add up to the total
        # at the bin edge the counts are exact: compare with the exact tail
        n_ge = int(np.count_nonzero(exact.tail_score >= tb.value))
        assert tb.false_matches == n_ge
        np.testing.assert_array_equal(counts_at(binned, tb).false_matches,
                                      np.bincount(exact.tail_cell[exact.tail_score >= tb.value],
                                                  minlength=exact.impostor_hist.shape[0]))


def test_overall_fmr_agrees_with_sklearn() -> None:
    table, emb = population(seed=2)
    stats = stats_for(table, emb, ["sex"], top_k=10**6)
    g = assign_groups(table, ["sex"])
    ref = naive_pairs(table, emb, g.index)
    fpr, _, _ = roc_curve(ref["genuine"], ref["score"].astype(np.float32), drop_intermediate=False)
    t = global_threshold(stats, 1e-2)
    assert t.fmr == pytest.approx(fpr[fpr <= 1e-2].max(), abs=1e-12)


def test_coarsening_equals_direct_computation() -> None:
    table, emb = population(seed=3)
    # Entries on a grid of 2^-8 make every partial sum of a dot product exact in float32, so the scores
    # do not depend on how BLAS blocks the product (OpenBLAS's GEMM rounds by matrix shape on some CPUs),
    # and the two groupings, which order the images differently, must give the same bits.
    emb = (np.round(emb * 256) / 256).astype(np.float32)
    fine_g = assign_groups(table, ["sex", "race"])
    fine = stats_for(table, emb, ["sex", "race"], top_k=10**6)
    coarse_g = assign_groups(table, ["sex"])
    mapping = np.empty(fine_g.n_groups, np.int64)
    mapping[fine_g.index] = coarse_g.index
    derived = coarsen(fine, mapping, coarse_g.n_groups)
    direct = stats_for(table, emb, ["sex"], top_k=10**6)
    np.testing.assert_array_equal(derived.impostor_hist, direct.impostor_hist)
    # sums run in float32 over at most 4096 scores, so compare means, not last digits
    np.testing.assert_allclose(derived.impostor_sum / derived.n_impostor, direct.impostor_sum / direct.n_impostor,
                               atol=1e-6)
    t = global_threshold(direct, 1e-2)
    for field in ("false_matches", "false_non_matches", "genuine_pairs", "impostor_pairs"):
        np.testing.assert_array_equal(getattr(counts_at(derived, t), field), getattr(counts_at(direct, t), field))


def test_merge_is_exact_in_any_order() -> None:
    rng = np.random.default_rng(4)
    s = rng.normal(size=5000).astype(np.float32)
    cells = rng.integers(0, 3, 5000)
    sa, sb = rng.integers(0, 50, 5000), rng.integers(50, 100, 5000)
    whole = PairStatistics(n_groups=2, bins=ScoreBins(-5, 5, 1000), top_k=100)
    whole.add_impostor_pairs(s, cells, sa, sb)
    parts = []
    for idx in np.array_split(rng.permutation(5000), 7):
        p = PairStatistics(n_groups=2, bins=ScoreBins(-5, 5, 1000), top_k=100)
        p.add_impostor_pairs(s[idx], cells[idx], sa[idx], sb[idx])
        parts.append(p)
    merged = parts[3]
    for p in parts[:3] + parts[4:]:
        merged.merge(p)
    np.testing.assert_array_equal(merged.impostor_hist, whole.impostor_hist)
    np.testing.assert_array_equal(np.sort(merged.tail_score), np.sort(whole.tail_score))
    np.testing.assert_array_equal(np.sort(merged.tail_score), np.sort(s)[-100:])


def test_summary_measures_by_hand() -> None:
    # FMR = (0.001, 0.004), FNMR = (0.02, 0.01)
    s = summarise(["a", "b"], np.array([1, 4]), np.array([1000, 1000]), np.array([2, 1]), np.array([100, 100]), 0.5)
    assert s.fpd == pytest.approx(4.0) and s.fnd == pytest.approx(2.0)
    assert s.ir == pytest.approx(np.sqrt(8.0))
    assert s.fdr == pytest.approx(1 - (0.5 * 0.003 + 0.5 * 0.01))
    # G = n/(n-1) * sum|xi-xj| / (2 n^2 mean): FMR 2 * 0.006 / 0.02 = 0.6; FNMR 2 * 0.02 / 0.12 = 1/3
    assert s.garbe == pytest.approx(0.5 * 0.6 + 0.5 / 3)
    assert s.ser == pytest.approx(0.0105 / 0.007)
    assert s.accuracy_std == pytest.approx(np.std([1 - 0.0105, 1 - 0.007]))
    assert s.zero_rule_fmr == () and s.left_out == ()


def test_zero_rates_single_group_and_empty_groups() -> None:
    s = summarise(["a", "b", "c"], np.array([0, 6, 1]), np.array([1000, 2000, 0]), np.array([0, 1]).repeat([1, 2]),
                  np.array([50, 50, 50]), 0.5)
    assert s.left_out == ("c",)  # no impostor pairs
    assert s.zero_rule_fmr == ("a",) and s.zero_rule_fnmr == ("a",)
    assert s.fpd == pytest.approx((6 / 2000) / (3 / 1000))  # 0 of 1000 counts as 3/1000
    assert s.fnd == pytest.approx((3 / 50) / (1 / 50))  # the replaced zero is now the larger rate
    assert np.isfinite(s.ir) and np.isfinite(s.ser)
    one = summarise(["a"], np.array([3]), np.array([1000]), np.array([2]), np.array([100]), 0.3)
    assert (one.fpd, one.fnd, one.ir, one.fdr, one.garbe) == (1.0, 1.0, 1.0, 1.0, 0.0) and one.notes


def test_each_side_is_measured_on_the_groups_that_have_its_pairs() -> None:
    # a: impostor pairs only (one image per person); b, c: both; d: genuine pairs only (one person)
    labels = ["a", "b", "c", "d"]
    s = summarise(labels, np.array([8, 2, 4, 0]), np.array([1000, 1000, 2000, 0]), np.array([0, 3, 1, 6]),
                  np.array([0, 100, 50, 200]), 0.5)
    fmr = {"a": 0.008, "b": 0.002, "c": 0.002}
    fnmr = {"b": 0.03, "c": 0.02, "d": 0.03}
    assert s.groups_fmr == ("a", "b", "c") and s.groups_fnmr == ("b", "c", "d") and s.groups == ("b", "c")
    assert s.left_out == ("a", "d") and s.unmeasured == ()
    assert s.fpd == pytest.approx(0.008 / 0.002) and s.fnd == pytest.approx(0.03 / 0.02)
    assert s.fmr_gap == pytest.approx(0.006) and s.fnmr_gap == pytest.approx(0.01)
    assert s.gini_fmr == pytest.approx(gini(np.array(list(fmr.values()))))
    assert s.gini_fnmr == pytest.approx(gini(np.array(list(fnmr.values()))))
    assert s.ir == pytest.approx(np.sqrt(4.0 * 1.5))
    assert s.fdr == pytest.approx(1 - (0.5 * 0.006 + 0.5 * 0.01))
    assert s.garbe == pytest.approx(0.5 * s.gini_fmr + 0.5 * s.gini_fnmr)
    assert s.ser == pytest.approx(((0.002 + 0.03) / 2) / ((0.002 + 0.02) / 2))  # b and c only


def test_impostor_only_data_gets_its_false_match_differential() -> None:
    s = summarise(["F", "M"], np.array([30, 10]), np.array([10_000, 10_000]), np.array([0, 0]), np.array([0, 0]))
    assert s.fpd == pytest.approx(3.0) and s.fmr_gap == pytest.approx(0.002)
    assert s.gini_fmr == pytest.approx(2 / 1 * 0.004 / (2 * 4 * 0.002))  # n/(n-1) * sum|xi-xj| / (2 n^2 mean)
    assert s.unmeasured == ("fnmr",) and s.groups_fnmr == () and s.groups == ()
    for m in ("fnd", "ir", "fdr", "garbe", "ser", "accuracy_std", "fnmr_gap", "gini_fnmr"):
        assert np.isnan(getattr(s, m)), m
    for alpha in (0.0, 1.0):  # nan ** 0 == 1 must not make a missing side look measured
        assert np.isnan(summarise(["F", "M"], np.array([30, 10]), np.array([10_000, 10_000]), np.array([0, 0]),
                                  np.array([0, 0]), alpha).ir)
    genuine_only = summarise(["F", "M"], np.array([0, 0]), np.array([0, 0]), np.array([4, 2]), np.array([100, 100]))
    assert genuine_only.fnd == pytest.approx(2.0) and np.isnan(genuine_only.fpd)
    assert genuine_only.unmeasured == ("fmr",) and genuine_only.notes


def test_gini_matches_the_sorted_formula() -> None:
    rng = np.random.default_rng(5)
    for n in (2, 3, 7, 20):
        x = rng.uniform(0.001, 0.1, n)
        xs = np.sort(x)
        sorted_form = (2 * np.sum(np.arange(1, n + 1) * xs) / (n * xs.sum()) - (n + 1) / n) * n / (n - 1)
        assert gini(x) == pytest.approx(sorted_form)
    assert gini(np.array([0.2, 0.2, 0.2])) == 0.0


def _write_population(tmp_path: Path, table: pd.DataFrame, emb: np.ndarray) -> Path:
    df = table.assign(sha256="", ok=True, reason="", message="", embedding=list(emb), det_score=0.9, face_index=0,
                      n_faces=1, box=None, landmarks=None)
    path = tmp_path / "emb.parquet"
    identity = {"name": "synthetic", "version": "1", "embedding_dim": 32, "models": [], "preprocessing": {},
                "runtime": {}}
    write_embeddings(df, path, {"engine": identity})
    return path


def test_score_files_give_the_same_counts_as_embeddings(tmp_path: Path) -> None:
    table, emb = population(seed=6)
    from_emb = evaluate_embeddings(_write_population(tmp_path, table, emb), ["sex"], target_fmrs=[1e-2])
    i, j = np.triu_indices(len(emb), k=1)
    scores = (emb[i] * emb[j]).sum(axis=1)
    ids = np.array([f"img{k}" for k in range(len(emb))])
    pd.DataFrame({"id": ids, "subject_id": table["subject_id"], "sex": table["sex"]}).to_csv(tmp_path / "m.csv",
                                                                                             index=False)
    pairs = pd.DataFrame({"id_a": ids[i], "id_b": ids[j], "score": 1 - scores})  # distances
    extra = pd.DataFrame({"id_a": ["nope", "img0"], "id_b": ["img1", "img0"], "score": [0.5, 0.1]})
    pd.concat([pairs, extra]).to_parquet(tmp_path / "p.parquet")
    from_scores = evaluate_scores(tmp_path / "p.parquet", tmp_path / "m.csv", ["sex"], higher_is_similar=False,
                                  target_fmrs=[1e-2], chunk_rows=777)
    assert from_scores.excluded == {"unknown_id": 1, "same_image": 1, "missing_score": 0}
    a, b = from_emb.analyses[0].operating_points[0], from_scores.analyses[0].operating_points[0]
    assert a.threshold.false_matches == b.threshold.false_matches
    np.testing.assert_array_equal(a.counts.impostor_pairs, b.counts.impostor_pairs)
    np.testing.assert_array_equal(a.counts.genuine_pairs, b.counts.genuine_pairs)
    np.testing.assert_array_equal(a.counts.false_non_matches, b.counts.false_non_matches)


def test_evaluate_command_on_real_faces_writes_valid_results(tmp_path: Path, tiny_manifest: Path) -> None:
    import json

    import jsonschema
    from click.testing import CliRunner

    from faceaudit.cli import main
    from tests_paths import SCHEMA

    runner = CliRunner()
    emb = tmp_path / "tiny.parquet"
    assert runner.invoke(main, ["embed", str(tiny_manifest), "--out", str(emb), "--quiet"]).exit_code == 0
    out = tmp_path / "results.json"
    res = runner.invoke(main, ["evaluate", "--embeddings", str(emb), "--by", "sex", "--by", "race",
                               "--fmr", "1e-3", "--fmr", "1e-6", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert [a["attributes"] for a in doc["analyses"]] == [["sex"], ["race"]]
    assert doc["settings"]["target_fmrs"] == [1e-3] and doc["settings"]["skipped_targets"][0]["target_fmr"] == 1e-6
    sex = doc["analyses"][0]
    assert sum(c["images"] for c in sex["counts"]) == 204
    assert sum(c["genuine_pairs"] for c in sex["counts"]) + sex["genuine_pairs_across_groups"] == 102
    op = sex["operating_points"][0]
    assert op["threshold_exact"] and op["fmr"] <= 1e-3
    m = np.array(op["cross_group_fmr"]["matrix"], dtype=float)
    np.testing.assert_allclose(m, m.T)
    assert [g["fmr"] for g in op["groups"]] == [m[i, i] for i in range(len(m))]
    assert doc["uncertainty"]["replicates"] == 1000 and doc["uncertainty"]["seed"] == 0
    for g in op["groups"]:
        lo, hi = g["fnmr_ci"]
        assert lo <= g["fnmr"] <= hi
        if g["false_non_matches"] == 0:  # studio photos: no errors, so the rule-of-3 interval
            assert (lo, hi) == (0.0, pytest.approx(3 / g["genuine_pairs"]))
    intersect = runner.invoke(main, ["evaluate", "--embeddings", str(emb), "--by", "sex", "--by", "race",
                                     "--intersect", "--fmr", "1e-3", "--out", str(out), "--quiet"])
    assert intersect.exit_code == 0
    doc = json.loads(out.read_text())
    assert len(doc["analyses"]) == 1 and "sex=F|race=" in doc["analyses"][0]["groups"][0]["group"]
    bad = runner.invoke(main, ["evaluate", "--embeddings", str(emb), "--by", "height", "--out", str(out)])
    assert bad.exit_code == 1 and "unknown attribute column(s) height" in bad.output


def test_calibration_thresholds_equal_a_brute_force_count(tmp_path: Path) -> None:
    """`faceaudit calibrate` against an independent count over every pair."""
    from faceaudit.calibrate import calibrate_from_embeddings

    table, emb = population(n_subjects=150, seed=7)
    cal = calibrate_from_embeddings(_write_population(tmp_path, table, emb), "synthetic")
    g = assign_groups(table, ["sex"])
    ref = naive_pairs(table, emb, g.index)
    imp, gen = ref.loc[~ref["genuine"], "score"].to_numpy(), ref.loc[ref["genuine"], "score"].to_numpy()
    assert cal.n_impostor == len(imp) and cal.n_genuine == len(gen)
    for fmr, t, fnmr in zip(cal.fmr, cal.threshold, cal.fnmr, strict=True):
        n_cal = round(fmr * len(imp))
        # the FMR recorded is the count at the threshold; the float64 reference may differ from the
        # float32 block products only for scores within float32 rounding of t
        assert int((imp >= t + 1e-6).sum()) <= n_cal <= int((imp >= t - 1e-6).sum())
        assert fnmr == pytest.approx((gen < t).mean(), abs=1 / len(gen))

def test_bootstrap_is_reproducible_by_seed(tmp_path: Path) -> None:
    table, emb = population(n_subjects=60, seed=8)
    path = _write_population(tmp_path, table, emb)

    def cis(seed: int) -> list[object]:
        res = evaluate_embeddings(path, ["sex"], target_fmrs=[5e-2], bootstrap=200, seed=seed)
        return [g["fmr_ci"] for g in res.to_dict()["analyses"][0]["operating_points"][0]["groups"]]

    assert cis(1) == cis(1)
    assert cis(1) != cis(2)


def test_fold_kernel_equals_numpy_reference() -> None:
    from faceaudit.scoring.kernels import fold_block_kernel

    rng = np.random.default_rng(9)
    bins = ScoreBins(-1.0, 1.0, 1000)
    block = rng.uniform(-1.2, 1.2, size=(37, 9000)).astype(np.float32)  # some out of range, rows > 4096
    hist = np.zeros(bins.n, np.int64)
    total, total_sq, above, outside = fold_block_kernel(block, np.float32(-1), np.float32(500), hist,
                                                        np.float32(0.5), np.float32(1))
    np.testing.assert_array_equal(hist, np.bincount(bins.index(block.ravel()), minlength=bins.n))
    assert total == pytest.approx(block.astype(np.float64).sum(), abs=1e-2)
    assert total_sq == pytest.approx((block.astype(np.float64) ** 2).sum(), rel=1e-6)
    assert above == int((block > 0.5).sum()) and outside == int(((block < -1) | (block > 1)).sum())


def test_identification_from_an_embeddings_file(tmp_path: Path) -> None:
    from faceaudit.evaluate import evaluate_identification

    table, emb = population(n_subjects=120, seed=10)
    path = _write_population(tmp_path, table, emb)
    [ident] = evaluate_identification(path, ["sex"], target_fpirs=[0.1], ranks=[1, 5])
    n_subjects_multi = int((table["subject_id"].value_counts() > 1).sum())
    singles = int((table["subject_id"].value_counts() == 1).sum())
    assert ident["mated_searches"] == len(table) - singles - n_subjects_multi
    assert ident["gallery_subjects"] == n_subjects_multi + singles - ident["non_mated_searches"]
    r1, r5 = ident["rank_accuracy"]
    assert 0 < r1["accuracy"] <= r5["accuracy"] <= 1
    op = ident["operating_points"][0]
    assert op["fpir"] <= 0.1 and sum(g["non_mated"] for g in op["groups"]) == ident["non_mated_searches"]
    london_like = tmp_path / "pairs_only.parquet"
    two_each = table.groupby("subject_id").head(2)
    two_each = two_each[two_each["subject_id"].map(two_each["subject_id"].value_counts()) == 2]
    _write_population(tmp_path, two_each.reset_index(drop=True), emb[two_each.index]).rename(london_like)
    with pytest.raises(InputError, match="subjects with one image"):
        evaluate_identification(london_like, ["sex"])


def test_genuine_pairs_across_groups_and_blocks_are_separated_exactly() -> None:
    """Groups drawn per image, so a subject's images sit in different groups and blocks."""
    table, emb = population(n_subjects=150, seed=11)
    table["race"] = np.random.default_rng(11).choice(["A", "B", "C"], len(table))
    g = assign_groups(table, ["race"])
    stats = stats_for(table, emb, ["race"], top_k=10**6, block=8)
    ref = naive_pairs(table, emb, g.index)
    gen, imp = ref[ref["genuine"]], ref[~ref["genuine"]]
    s, cells, _ = stats.genuine()
    assert len(s) == len(gen)
    np.testing.assert_array_equal(np.bincount(cells, minlength=6),
                                  np.bincount(cell_index(gen["ga"].to_numpy(), gen["gb"].to_numpy(), 3), minlength=6))
    want = np.bincount(cell_index(imp["ga"].to_numpy(), imp["gb"].to_numpy(), 3), minlength=6)
    np.testing.assert_array_equal(stats.n_impostor, want)
    assert (stats.impostor_hist >= 0).all()
    np.testing.assert_allclose(np.sort(stats.tail_score)[::-1], np.sort(imp["score"])[::-1], atol=1e-5)
    c = counts_at(stats, global_threshold(stats, 1e-2))
    assert c.genuine_cross_group == int((gen["ga"] != gen["gb"]).sum())


def test_declared_impostor_sampling(tmp_path: Path) -> None:
    from faceaudit.scoring.compare import ImpostorSample

    table, emb = population(n_subjects=150, seed=12)
    g = assign_groups(table, ["sex"])
    subj = np.unique(table["subject_id"], return_inverse=True)[1]
    full = compare_embeddings(emb, subj, g.index, g.n_groups, top_k=10**6)
    runs = [compare_embeddings(emb, subj, g.index, g.n_groups, top_k=10**6, threads=t,
                               sample=ImpostorSample(0.3, seed=5)) for t in (1, 2)]
    np.testing.assert_array_equal(runs[0].impostor_hist, runs[1].impostor_hist)  # threads do not matter
    n_all, n_kept = int(full.n_impostor.sum()), int(runs[0].n_impostor.sum())
    assert abs(n_kept - 0.3 * n_all) < 4 * np.sqrt(n_all * 0.3 * 0.7)
    assert len(runs[0].genuine()[0]) == len(full.genuine()[0])  # genuine pairs are never sampled
    other = compare_embeddings(emb, subj, g.index, g.n_groups, top_k=10**6, sample=ImpostorSample(0.3, seed=6))
    assert not np.array_equal(other.impostor_hist, runs[0].impostor_hist)
    res = evaluate_embeddings(_write_population(tmp_path, table, emb), ["sex"], target_fmrs=[1e-2],
                              impostor_sample=0.3, seed=5).to_dict()
    assert res["settings"]["impostor_pairs"].startswith("Bernoulli sample")
    assert res["analyses"][0]["operating_points"][0]["groups"][0]["fmr_ci"] is None
    assert "sampled" in res["uncertainty"]["note"]


def test_binned_threshold_on_tied_scores_keeps_cells_consistent() -> None:
    """Scores on a 0.02 grid sit exactly on bin edges; cell counts must still add up to the total."""
    rng = np.random.default_rng(13)
    s = (rng.integers(0, 50, 3780) * 0.02).astype(np.float32)
    cells = rng.integers(0, 3, 3780)
    stats = PairStatistics(n_groups=2, bins=ScoreBins(), top_k=37)
    stats.add_impostor_pairs(s, cells, np.zeros(3780, int), np.ones(3780, int))
    for target in (0.01, 0.05, 0.2):
        t = global_threshold(stats, target)
        assert not t.exact and t.fmr <= target
        assert counts_at(stats, t).false_matches.sum() == t.false_matches


def test_overall_fnmr_counts_every_genuine_pair() -> None:
    table, emb = population(n_subjects=150, seed=14)
    table["race"] = np.random.default_rng(14).choice(["A", "B"], len(table))
    stats = stats_for(table, emb, ["race"], top_k=10**6)
    t = global_threshold(stats, 1e-2)
    c = counts_at(stats, t)
    scores, _, _ = stats.genuine()
    assert c.genuine_pairs_all == len(scores) > c.genuine_pairs.sum()
    assert c.false_non_matches_all == int((scores < t.value).sum())


def test_score_histograms_equal_numpy_histograms_of_the_naive_pairs() -> None:
    from faceaudit.metrics.rates import score_histogram

    table, emb = population()
    g = assign_groups(table, ["sex"])
    stats = stats_for(table, emb, ["sex"], top_k=100)
    pairs = naive_pairs(table, emb, g.index)
    for k in range(g.n_groups):
        h = score_histogram(stats, k, n_bins=80)
        assert len(h.edges) == 81 and h.edges[0] == -1.0 and h.edges[-1] == 1.0
        mine = pairs[(pairs["ga"] == k) & (pairs["gb"] == k)]
        for counts, kind in ((h.genuine, True), (h.impostor, False)):
            ref, _ = np.histogram(mine.loc[mine["genuine"] == kind, "score"], bins=h.edges)
            assert counts.sum() == len(mine[mine["genuine"] == kind])
            assert np.abs(counts - ref).sum() <= 2  # a score within float32 rounding of an edge may move one bin
    assert len(score_histogram(stats, 0, n_bins=7).edges) - 1 == 5  # lowered to a divisor of 20,000 bins


def test_listed_pairs_are_the_only_ones_counted() -> None:
    from faceaudit.evaluate import evaluate_listed_pairs

    table, emb = population(40)
    frame = table.assign(ok=True, embedding=list(emb))
    frame.loc[3, "ok"] = False
    frame.loc[3, "embedding"] = None
    rng = np.random.default_rng(1)
    ia, ib = rng.integers(0, len(frame), 3000), rng.integers(0, len(frame), 3000)
    keep = ia != ib
    ia, ib = ia[keep], ib[keep]
    res = evaluate_listed_pairs(frame, {}, ia, ib, [["sex"]], target_fmrs=[1e-2])
    failed = (ia == 3) | (ib == 3)
    subj = frame["subject_id"].to_numpy()
    op = res.analyses[0].operating_points[0]
    assert res.excluded["pair_failed_to_enrol"] == failed.sum()
    assert op.threshold.impostor_pairs == int((subj[ia] != subj[ib])[~failed].sum())
    scores = np.einsum("ij,ij->i", emb[ia[~failed]], emb[ib[~failed]])
    imp = scores[(subj[ia] != subj[ib])[~failed]]
    assert op.threshold.false_matches == int((imp >= op.threshold.value).sum())


def test_csv_score_file_with_bad_rows(tmp_path: Path) -> None:
    """Ids keep leading zeros; unknown ids, self-pairs and unreadable scores are counted, the rest used."""
    from faceaudit.io.scores import iter_pairs

    pd.DataFrame({"id": ["007", "7", "010", "011"], "subject_id": ["a", "a", "b", "c"],
                  "sex": ["F", "F", "M", "M"]}).to_csv(tmp_path / "m.csv", index=False)
    rows = [("007", "7", "0.9"), ("007", "010", "0.2"), ("7", "011", "n/a"), ("007", "999", "0.5"),
            ("010", "010", "0.1"), ("010", "011", "0.3")] * 200
    pd.DataFrame(rows, columns=["id_a", "id_b", "score"]).to_csv(tmp_path / "p.csv", index=False)
    (chunk,) = list(iter_pairs(tmp_path / "p.csv", pd.Series(["007", "7", "010", "011"])))
    assert chunk.index_a[:6].tolist() == [0, 0, 1, 0, 2, 2] and chunk.index_b[:6].tolist() == [1, 2, 3, -1, 2, 3]
    assert np.isnan(chunk.score[2]) and chunk.score[0] == 0.9
    res = evaluate_scores(tmp_path / "p.csv", tmp_path / "m.csv", ["sex"], target_fmrs=[0.1], chunk_rows=500)
    assert res.excluded == {"unknown_id": 200, "same_image": 200, "missing_score": 200}
    op = res.analyses[0].operating_points[0]
    assert op.threshold.impostor_pairs == 400 and op.counts.genuine_pairs_all == 200


def test_score_file_targets_count_only_usable_impostor_pairs(tmp_path: Path) -> None:
    """Rows with unknown ids do not make a small target FMR look supported."""
    ids = [f"i{k}" for k in range(60)]
    pd.DataFrame({"id": ids, "subject_id": [f"s{k // 2}" for k in range(60)], "sex": ["F", "M"] * 30}).to_csv(
        tmp_path / "m.csv", index=False)
    ia, ib = np.triu_indices(60, k=1)
    rng = np.random.default_rng(0)
    real = pd.DataFrame({"id_a": np.array(ids)[ia], "id_b": np.array(ids)[ib], "score": rng.random(len(ia))})
    junk = pd.DataFrame({"id_a": ["nobody"] * 50_000, "id_b": ids[:1] * 50_000, "score": 0.5})
    pd.concat([real, junk]).to_csv(tmp_path / "p.csv", index=False)
    res = evaluate_scores(tmp_path / "p.csv", tmp_path / "m.csv", ["sex"], target_fmrs=[1e-2, 1e-3])
    assert res.settings["target_fmrs"] == [1e-2]  # 1,740 impostor pairs support 1e-2, not 1e-3
    assert "1,740 impostor pairs" in res.settings["skipped_targets"][0]["reason"]
    pd.DataFrame({"id": ["a", "b"], "subject_id": ["x", ""]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="empty 'subject_id' on line"):
        evaluate_scores(tmp_path / "p.csv", tmp_path / "bad.csv", ["sex"])


def test_nothing_enrolled_is_a_clear_error() -> None:
    from faceaudit.evaluate import evaluate_frame

    frame = pd.DataFrame({"path": ["a", "b", "c"], "subject_id": ["1", "2", "3"], "sex": ["F", "M", "F"],
                          "ok": [False, False, True], "reason": ["missing_file", "missing_file", None],
                          "embedding": [None, None, np.ones(4, np.float32) / 2]})
    with pytest.raises(InputError, match=r"only 1 of 3 images enrolled \(failures: 2 missing_file\)"):
        evaluate_frame(frame, {}, ["sex"])


def test_labels_holding_the_key_separators_keep_their_values() -> None:
    """A label value may contain '|' or '=' (it is the user's text): grouped and reported, not parsed apart."""
    table, emb = population(seed=4)
    table["race"] = table["race"].map({"A": "A|B", "B": "x=y", "": ""})
    g = assign_groups(table, ["sex", "race"])
    assert {tuple(g.values(i).values()) for i in range(g.n_groups)} == {
        (s, r) for s in ("F", "M") for r in ("A|B", "x=y", "unknown")}
    assert list(g.labels) == sorted(g.labels)
    for i in range(g.n_groups):  # each image in the group its own values name
        rows = table[g.index == i]
        v = g.values(i)
        assert (rows["sex"] == v["sex"]).all() and (rows["race"].replace("", "unknown") == v["race"]).all()
    df = table.assign(ok=True, embedding=list(emb))
    doc = evaluate_frame(df, {}, ["race"], target_fmrs=[1e-1], bootstrap=20, permutations=10).to_dict()
    assert {x["values"]["race"] for x in doc["analyses"][0]["groups"]} == {"A|B", "x=y", "unknown"}


def test_summary_rows_equal_summarise_row_by_row() -> None:
    """The vectorised summary measures against :func:`summarise` on random counts, including groups without
    pairs of one kind or both, zero error counts (the rule of 3), one group, and alpha at 0 and 1."""
    from faceaudit.metrics.summary import MEASURES, PART_MEASURES, summary_rows

    rng = np.random.default_rng(0)
    names = MEASURES + PART_MEASURES
    for trial in range(600):
        g = int(rng.integers(1, 6))
        imp = rng.integers(0, 50, g) * rng.integers(0, 2, g)
        gen = rng.integers(0, 20, g) * rng.integers(0, 2, g)
        fm = np.minimum(rng.integers(0, 5, g), imp) * (trial % 7 != 0)
        fnm = np.minimum(rng.integers(0, 3, g), gen)
        alpha = (0.0, 0.5, 1.0, 0.3)[trial % 4]
        s = summarise([f"g{i}" for i in range(g)], fm, imp, fnm, gen, alpha)
        got = summary_rows(np.stack([fm, fm]), np.stack([imp, imp]), np.stack([fnm, fnm]), np.stack([gen, gen]),
                           alpha, names)
        want = [getattr(s, m) for m in names]
        for row in got:
            np.testing.assert_allclose(row, want, rtol=1e-12, atol=1e-15, equal_nan=True)
