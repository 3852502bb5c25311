"""Comparing engines: the paired bootstrap against brute force, the calls it allows, and the comparison report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from browser import chromium, needs_chromium
from faceaudit.audit.config import (
    AuditConfig,
    DatasetConfig,
    GroupsConfig,
    MetricsConfig,
    RunConfig,
    SystemConfig,
    UncertaintyConfig,
)
from faceaudit.audit.run import run_audit
from faceaudit.cli import main
from faceaudit.comparison import EngineRun, compare_frames
from faceaudit.demo import bundled_manifest
from faceaudit.engines.models import SFACE_2021DEC_INT8BQ
from faceaudit.engines.onnx_rewrite import prepare_for_onnxruntime
from faceaudit.errors import InputError
from faceaudit.metrics.bootstrap import subject_draws
from faceaudit.metrics.comparison import call, paired_difference, paired_replicates
from faceaudit.metrics.rates import global_threshold
from faceaudit.report.comparison import SECTIONS, pair_findings
from faceaudit.report.integrity import verify_folder
from faceaudit.scoring.compare import compare_embeddings
from reference import materialised_counts
from tests_paths import COMPARISON_SCHEMA, SCHEMA


def _population(seed: int, n_subj: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Subjects with 1-3 images in 2 groups, and two correlated 'engines' (B = A plus more noise)."""
    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(n_subj), rng.integers(1, 4, n_subj))
    group = (np.arange(n_subj) % 2)[subj]
    centres = rng.normal(size=(n_subj, 8))
    a = centres[subj] + rng.normal(scale=1.1, size=(len(subj), 8))
    b = a + rng.normal(scale=0.8, size=a.shape) * (1 + group)[:, None]

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return subj, group, unit(a), unit(b), np.zeros((n_subj, 2))


def test_paired_replicates_equal_a_materialised_resample() -> None:
    """Both engines' per-group rates in a replicate equal counting pairs of a materialised resample by hand."""
    subj, group, ea, eb, n_sg = _population(1)
    np.add.at(n_sg, (subj, group), 1)
    sa = compare_embeddings(ea, subj, group, 2, top_k=10**6, row_block=5, col_block=7)
    sb = compare_embeddings(eb, subj, group, 2, top_k=10**6, row_block=6, col_block=4)
    ta, tb = global_threshold(sa, 0.05), global_threshold(sb, 0.05)
    draws = np.stack([np.random.default_rng(s).integers(0, 4, len(n_sg)) for s in range(4)])
    rep = paired_replicates(sa, ta, sb, tb, n_sg, ["g0", "g1"], draws, alpha=0.5)
    for r, m in enumerate(draws):
        for emb, t, fmr, fnmr in ((ea, ta, rep.fmr_a, rep.fnmr_a), (eb, tb, rep.fmr_b, rep.fnmr_b)):
            c = materialised_counts(emb @ emb.T, subj, group, m, t.value)
            with np.errstate(invalid="ignore", divide="ignore"):
                np.testing.assert_allclose(fmr[r], c[0] / c[1], equal_nan=True)
                np.testing.assert_allclose(fnmr[r], c[2] / c[3], equal_nan=True)


def test_observed_difference_is_the_difference_of_the_two_audits() -> None:
    """d = rate_B - rate_A per group, by hand from the same thresholds, and a [0, 0] interval gives no call."""
    subj, group, ea, eb, n_sg = _population(2, 30)
    np.add.at(n_sg, (subj, group), 1)
    sa = compare_embeddings(ea, subj, group, 2, top_k=10**6)
    sb = compare_embeddings(eb, subj, group, 2, top_k=10**6)
    ta, tb = global_threshold(sa, 0.02), global_threshold(sb, 0.02)
    draws = subject_draws(np.arange(30) % 2, 200, seed=0)
    d = paired_difference(sa, ta, sb, tb, n_sg, ["g0", "g1"], draws, alpha=0.5)
    assert d is not None
    for k in range(2):
        same_group = (group[:, None] == k) & (group[None, :] == k) & np.triu(np.ones((len(subj),) * 2, bool), 1)
        gen = same_group & (subj[:, None] == subj[None, :])
        imp = same_group & (subj[:, None] != subj[None, :])
        sa_, sb_ = ea @ ea.T, eb @ eb.T
        fmr = [(s[imp] >= t.value).mean() for s, t in ((sa_, ta), (sb_, tb))]
        fnmr = [(s[gen] < t.value).mean() for s, t in ((sa_, ta), (sb_, tb))]
        assert d.fmr_diff[k] == pytest.approx(fmr[1] - fmr[0])
        assert d.fnmr_diff[k] == pytest.approx(fnmr[1] - fnmr[0])
        lo, hi = d.fnmr_diff_ci[k]
        assert lo <= hi
    same = paired_difference(sa, ta, sa, ta, n_sg, ["g0", "g1"], draws, alpha=0.5)
    assert same is not None
    assert np.all(same.fmr_diff_ci == 0) and np.all(same.fnmr_diff_ci == 0)
    assert {call(tuple(ci)) for ci in same.fnmr_diff_ci} == {"no clear difference"}
    assert all(same.summary_diff_ci[m] == (0.0, 0.0) for m in same.summary_diff_ci)


def test_pairing_narrows_the_interval_of_a_difference() -> None:
    """Resampling the same subjects for both engines cancels what they share: the paired interval is narrower
    than the one from independent resamples of each engine (the reason the issue asks for pairing)."""
    subj, group, ea, _, n_sg = _population(3, 60)
    np.add.at(n_sg, (subj, group), 1)
    eb = ea + np.random.default_rng(9).normal(scale=0.05, size=ea.shape).astype(np.float32)  # a close relative of A
    eb /= np.linalg.norm(eb, axis=1, keepdims=True)
    sa = compare_embeddings(ea, subj, group, 2, top_k=10**6)
    sb = compare_embeddings(eb, subj, group, 2, top_k=10**6)
    ta, tb = global_threshold(sa, 0.02), global_threshold(sb, 0.02)
    strata = np.arange(60) % 2
    d1, d2 = subject_draws(strata, 400, seed=1), subject_draws(strata, 400, seed=2)
    paired = paired_replicates(sa, ta, sb, tb, n_sg, ["g0", "g1"], d1, 0.5)
    other = paired_replicates(sa, ta, sb, tb, n_sg, ["g0", "g1"], d2, 0.5)
    width_paired = np.nanstd(paired.fnmr_b - paired.fnmr_a, axis=0)
    width_unpaired = np.nanstd(other.fnmr_b - paired.fnmr_a, axis=0)  # B on other subjects than A
    assert np.all(width_paired < width_unpaired)


def _frame(emb: np.ndarray, subj: np.ndarray, sex: np.ndarray, ok: np.ndarray) -> pd.DataFrame:
    sex = np.where(np.arange(len(subj)) % 7 == 3, None, sex)  # some labels missing, as in real data
    return pd.DataFrame({"path": [f"img{i}.jpg" for i in range(len(subj))], "subject_id": subj.astype(str),
                         "sex": pd.array(sex, dtype="string"), "ok": ok, "reason": np.where(ok, None, "no_face"),
                         "embedding": [v if o else None for v, o in zip(emb, ok, strict=True)]})


def test_compare_frames_uses_the_images_every_engine_enrolled() -> None:
    subj, group, ea, eb, _ = _population(4, 40)
    sex = np.where(group == 0, "F", "M")
    ok_a = np.ones(len(subj), bool)
    ok_b = ok_a.copy()
    ok_b[[0, 5]] = False
    runs = [EngineRun("A", _frame(ea, subj, sex, ok_a), {}), EngineRun("B", _frame(eb, subj, sex, ok_b), {})]
    res = compare_frames(runs, [["sex"]], target_fmrs=[0.05], bootstrap=50, permutations=0)
    assert res.common["enrolled_by_all"] == len(subj) - 2
    assert res.results[0].inputs["enrolled"] == res.results[1].inputs["enrolled"] == len(subj) - 2
    assert res.results[0].excluded == {"failed_to_enrol": 0, "enrolled_but_failed_by_another_engine": 2}
    assert res.results[1].excluded == {"failed_to_enrol": 2, "enrolled_but_failed_by_another_engine": 0}
    # each engine's own report counts its own failures (A none), though both are measured on the common images
    assert all(c.failed_to_enrol == 0 for c in res.results[0].analyses[0].counts)  # F, M and unknown
    assert sum(c.failed_to_enrol for c in res.results[1].analyses[0].counts) == 2
    fails = {g["group"]: g["failed_to_enrol"] for g in res.enrolment[0]}
    assert sum(f["B"] for f in fails.values()) == 2 and sum(f["A"] for f in fails.values()) == 0
    doc = res.to_dict()
    op = doc["analyses"][0]["operating_points"][0]
    assert set(op["engines"]) == {"A", "B"} and op["differences"][0]["engine"] == "B"
    # the same impostor pairs for both engines: FMR differences are differences of counts over equal totals
    ga = {g["group"]: g for g in op["engines"]["A"]["groups"]}
    for g in op["engines"]["B"]["groups"]:
        assert g["impostor_pairs"] == ga[g["group"]]["impostor_pairs"]
    with pytest.raises(InputError, match="different images"):
        compare_frames([EngineRun("A", _frame(ea, subj, sex, ok_a), {}),
                        EngineRun("B", _frame(eb, subj, sex, ok_a).iloc[::-1].reset_index(drop=True), {})],
                       [["sex"]], target_fmrs=[0.05])


def test_without_the_bootstrap_nothing_is_called_and_the_report_says_why() -> None:
    subj, group, ea, eb, _ = _population(5, 30)
    sex = np.where(group == 0, "F", "M")
    ok = np.ones(len(subj), bool)
    res = compare_frames([EngineRun("A", _frame(ea, subj, sex, ok), {}), EngineRun("B", _frame(eb, subj, sex, ok), {})],
                         [["sex"]], target_fmrs=[0.05], bootstrap=0, permutations=0)
    a = res.to_dict()["analyses"][0]
    d = a["operating_points"][0]["differences"][0]
    assert d["groups"] is None and "bootstrap was switched off" in d["note"]
    text = pair_findings(a, 0, d).sentences()
    assert text == ["B and A were not compared: the bootstrap was switched off (bootstrap = 0)."]


def test_findings_state_a_difference_only_when_the_interval_excludes_zero() -> None:
    analysis = {"groups": ["sex=F", "sex=M"], "operating_points": [{"target_fmr": 1e-3, "engines": {
        "A": {"threshold": 0.3, "groups": [{"group": "sex=F", "fmr": 0.002, "fnmr": 0.05},
                                           {"group": "sex=M", "fmr": 0.001, "fnmr": 0.04}],
              "summary": {"fpd": 2.0, "fdr": 0.99}},
        "B": {"threshold": 0.5, "groups": [{"group": "sex=F", "fmr": 0.001, "fnmr": 0.05},
                                           {"group": "sex=M", "fmr": 0.001, "fnmr": 0.03}],
              "summary": {"fpd": 1.0, "fdr": 0.98}}}}]}
    diff = {"engine": "B", "reference": "A", "groups": [
        {"group": "sex=F", "fmr_diff": -0.001, "fmr_diff_ci": [-0.0015, -0.0004], "fmr_call": "lower",
         "fnmr_diff": 0.0, "fnmr_diff_ci": [-0.01, 0.01], "fnmr_call": "no clear difference"},
        {"group": "sex=M", "fmr_diff": 0.0, "fmr_diff_ci": [-0.0002, 0.0002], "fmr_call": "no clear difference",
         "fnmr_diff": -0.01, "fnmr_diff_ci": [-0.02, 0.001], "fnmr_call": "no clear difference"}],
        "summary": {"fpd": {"diff": -1.0, "ci": [-1.5, -0.2], "call": "lower", "fairer": "b"},
                    "fdr": {"diff": -0.01, "ci": [-0.02, -0.001], "call": "lower", "fairer": "a"}}}
    text = " ".join(pair_findings(analysis, 0, diff).sentences())
    assert "For sex=F, B's false match rate is lower than A's: 0.1% vs 0.2% (difference −0.1 points" in text
    assert "sex=M" not in text.split("No clear difference")[0]  # no call for sex=M
    assert "FNMR of sex=M" in text and "FMR of sex=M" in text
    assert "By FPD" in text and "B is fairer than A" in text and "A is fairer than B" in text
    assert "The measures disagree" in text
    diff["groups"][1]["fnmr_call"] = "not computed"
    text = " ".join(pair_findings(analysis, 0, diff).sentences())
    assert "Not measured (no pairs of that kind, or too few people): FNMR of sex=M" in text
    from faceaudit.report.comparison import points

    assert (points(0.00071), points(-0.00071), points(0.0), points(0.0123)) == (
        "+0.071 points", "−0.071 points", "0 points", "+1.23 points")


# ---------------------------------------------------------------- the comparison report, end to end


@pytest.fixture(scope="module")
def sface_f32(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A float32 copy of the bundled SFace file as an ONNX engine: the same vectors as the default engine."""
    folder = tmp_path_factory.mktemp("model")
    model = folder / "sface_f32.onnx"
    data = prepare_for_onnxruntime(SFACE_2021DEC_INT8BQ.read_verified())
    model.write_bytes(data if isinstance(data, bytes) else data.SerializeToString())
    (folder / "sface_f32.onnx.json").write_text(json.dumps({"mean": 0, "std": 1, "licence": "Apache-2.0"}))
    return f"onnx:{model}"


def _config(cache: Path, engines: tuple[str, ...]) -> AuditConfig:
    return AuditConfig(
        title="comparison test", dataset=DatasetConfig(path=str(bundled_manifest()), labels="self-reported"),
        system=SystemConfig(engine=engines), groups=GroupsConfig(by=("sex",)),
        metrics=MetricsConfig(target_fmrs=(1e-2,)), uncertainty=UncertaintyConfig(bootstrap=100, permutations=20),
        run=RunConfig(cache=str(cache), workers=1))


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory, sface_f32: str) -> Path:
    """The default engine against its own float32 copy by path: the report must find no difference at all."""
    base = tmp_path_factory.mktemp("twins")
    run_audit(_config(base / "cache.sqlite", ("yunet-sface", sface_f32)), base / "report", progress=False,
              echo=lambda m: None)
    return base / "report"


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def test_identical_engines_show_no_difference_and_every_file(twins: Path) -> None:
    import jsonschema

    doc = _json(twins / "results.json")
    jsonschema.validate(doc, _json(COMPARISON_SCHEMA))
    assert doc["kind"] == "comparison" and len(doc["engines"]) == 2
    for a in doc["analyses"]:
        for op in a["operating_points"]:
            thresholds = [e["threshold"] for e in op["engines"].values()]
            assert thresholds[0] == thresholds[1]
            for g in op["differences"][0]["groups"]:
                assert g["fmr_diff"] == 0 and g["fnmr_diff"] == 0 and g["fmr_call"] == g["fnmr_call"] == \
                    "no clear difference"
            assert all(s["fairer"] is None for s in op["differences"][0]["summary"].values())
    for e in doc["engines"]:  # each engine's own report: a valid single-system results.json
        sub = _json(twins / e["folder"] / "results.json")
        jsonschema.validate(sub, _json(SCHEMA))
        assert (twins / e["folder"] / "report.html").is_file()
    assert "No summary measure shows a clear difference" in (twins / "summary.md").read_text()
    assert verify_folder(twins).ok
    left = pd.read_csv(twins / "left_out.csv")
    assert "engine" in left.columns


def test_cli_repeated_engine_compares_and_config_rules(tmp_path: Path, sface_f32: str) -> None:
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["audit", str(bundled_manifest()), "--by", "sex", "--engine", "yunet-sface",
                                    "--engine", sface_f32, "--fmr", "1e-2", "--bootstrap", "50", "--permutations",
                                    "0", "--workers", "1", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "No clear difference between onnx:" in res.output
    cfg = AuditConfig.from_toml(out / "config.toml")
    assert cfg.system.engines() == ["yunet-sface", sface_f32]
    bad = [
        (["--engine", "yunet-sface", "--engine", "yunet-sface"], "twice"),
        (["--engine", "yunet-sface", "--engine", sface_f32, "--impostor-sample", "0.5"], "impostor_sample"),
    ]
    for extra, message in bad:
        r = CliRunner().invoke(main, ["audit", str(bundled_manifest()), "--by", "sex", "--out",
                                      str(tmp_path / "x"), *extra])
        assert r.exit_code != 0 and message in r.output, r.output
    with pytest.raises(InputError, match="give one of engine, embeddings or scores"):
        AuditConfig(dataset=DatasetConfig(path="x.csv"), groups=GroupsConfig(by=("sex",)),
                    system=SystemConfig(engine=("a", "b"), embeddings="e.parquet")).check()
    with pytest.raises(InputError, match="needs all pairs among the people"):
        AuditConfig(dataset=DatasetConfig(path="x", format="pairs", pairs="p.txt"), groups=GroupsConfig(by=("sex",)),
                    system=SystemConfig(engine=("a", "b"))).check()


@needs_chromium
def test_comparison_report_renders_in_headless_chromium(twins: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with chromium(tmp_path / "profile") as driver:
        driver.get((twins / "report.html").resolve().as_uri())
        for section in SECTIONS:
            el = driver.find_element(By.ID, section)
            assert el.is_displayed() and el.size["height"] > 20, section
        plots = driver.find_elements(By.CSS_SELECTOR, "img.plot")
        assert len(plots) == 2  # one target FMR, one grouping: rates side by side, and the differences
        for img in plots:
            assert driver.execute_script("return arguments[0].complete ? arguments[0].naturalWidth : 0", img) > 300
        links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#engines a")]
        assert len(links) == 2
        driver.get(links[1])  # an engine's own report opens from the comparison
        assert driver.find_element(By.ID, "groups").is_displayed()
        shot = tmp_path / "comparison.png"
        assert driver.save_screenshot(str(shot))
    assert np.asarray(Image.open(shot).convert("L"), np.float64).std() > 10


def test_default_engine_and_dlib_on_real_faces(tmp_path: Path) -> None:
    """Two different engines on the bundled London faces: every stated difference is the difference of the rates
    in the two engines' own reports, and is called only when its interval excludes zero."""
    from faceaudit.engines import dlib_resnet

    if dlib_resnet.missing():
        pytest.skip(f"dlib is not installed here: {dlib_resnet.INSTALL}")
    cfg = _config(tmp_path / "cache.sqlite", ("yunet-sface", "dlib-resnet"))
    run_audit(cfg, tmp_path / "r", progress=False, echo=lambda m: None)
    doc = _json(tmp_path / "r" / "results.json")
    own = {e["name"]: _json(tmp_path / "r" / e["folder"] / "results.json") for e in doc["engines"]}
    op = doc["analyses"][0]["operating_points"][0]
    rates = {n: {g["group"]: g for g in own[n]["analyses"][0]["operating_points"][0]["groups"]} for n in own}
    assert op["engines"]["dlib-resnet"]["threshold"] != op["engines"]["yunet-sface"]["threshold"]
    for g in op["differences"][0]["groups"]:
        for kind in ("fmr", "fnmr"):
            want = rates["dlib-resnet"][g["group"]][kind] - rates["yunet-sface"][g["group"]][kind]
            assert g[f"{kind}_diff"] == pytest.approx(want, abs=1e-12)
            lo, hi = g[f"{kind}_diff_ci"]
            assert (g[f"{kind}_call"] in ("lower", "higher")) == (lo > 0 or hi < 0)
    assert doc["common"]["enrolled_by_all"] <= doc["common"]["images"]
