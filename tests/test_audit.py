"""`faceaudit audit` end to end on the bundled London faces: every input kind, every report file, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from browser import chromium, needs_chromium
from faceaudit.audit.config import AuditConfig, DatasetConfig, GroupsConfig, MetricsConfig, RunConfig, UncertaintyConfig
from faceaudit.audit.run import run_audit
from faceaudit.cli import main
from faceaudit.demo import bundled_manifest
from faceaudit.errors import InputError
from faceaudit.io.embeddings import read_embeddings
from faceaudit.report.html import SECTIONS
from faceaudit.report.integrity import generate_key, verify_folder
from reference import group_rates, pair_table
from tests_paths import SCHEMA

FMRS = (1e-2, 1e-3)


def _config(cache: Path, **dataset: Any) -> AuditConfig:
    return AuditConfig(
        title="test audit",
        dataset=DatasetConfig(**{"path": str(bundled_manifest()), "labels": "self-reported", **dataset}),
        groups=GroupsConfig(by=("sex", "race"), intersections=(("sex", "race"),)),
        metrics=MetricsConfig(target_fmrs=FMRS),
        uncertainty=UncertaintyConfig(bootstrap=100, permutations=50, seed=3),
        run=RunConfig(cache=str(cache), workers=1),
    )


@pytest.fixture(scope="module")
def london(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AuditConfig]:
    """One audit of the London crops, shared by the tests that only read it."""
    base = tmp_path_factory.mktemp("london")
    cfg = _config(base / "cache.sqlite")
    run_audit(cfg, base / "report", progress=False, echo=lambda m: None)
    return base / "report", cfg


def _results(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((folder / "results.json").read_text())
    return doc


def test_report_has_every_file_and_valid_results(london: tuple[Path, AuditConfig]) -> None:
    import jsonschema

    folder, _ = london
    for name in ("report.html", "results.json", "summary.md", "provenance.json", "config.toml", "left_out.csv",
                 "MANIFEST.sha256"):
        assert (folder / name).is_file(), name
    doc = _results(folder)
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert [a["attributes"] for a in doc["analyses"]] == [["sex"], ["race"], ["sex", "race"]]
    assert doc["audit"]["dataset"]["images"] == 204 and doc["audit"]["dataset"]["subjects"] == 102
    html = (folder / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    assert html.count('src="data:image/png;base64,') == 6 * 3  # six plots per analysis
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched
    summary = (folder / "summary.md").read_text()
    assert "## Limitations" in summary and "sex=F" in summary
    assert verify_folder(folder).ok


def test_group_counts_equal_a_pandas_reference(london: tuple[Path, AuditConfig]) -> None:
    """Every per-group count of the report recomputed from scratch over the materialised pair table."""
    folder, cfg = london
    doc = _results(folder)
    from faceaudit.api import embed

    frame = embed(bundled_manifest(), cache=cfg.run.cache).frame
    for analysis in doc["analyses"][:2]:
        (attr,) = analysis["attributes"]
        for op in analysis["operating_points"]:
            ref = group_rates(pair_table(frame, op["threshold"], [attr]), attr).set_index("group")
            for g in op["groups"]:
                r = ref.loc[g["values"][attr]]
                assert (g["false_matches"], g["impostor_pairs"]) == (r["false_matches"], r["impostor_pairs"])
                assert (g["false_non_matches"], g["genuine_pairs"]) == (r["false_non_matches"], r["genuine_pairs"])
            overall = pair_table(frame, op["threshold"], [])
            imp = overall[~overall["genuine"]]
            assert op["false_matches"] == int(imp["match"].sum()) and op["impostor_pairs"] == len(imp)


def test_rerunning_the_written_config_reproduces_the_numbers(london: tuple[Path, AuditConfig],
                                                             tmp_path: Path) -> None:
    folder, _ = london
    again = CliRunner().invoke(main, ["audit", "--config", str(folder / "config.toml"), "--out", str(tmp_path / "r"),
                                      "--quiet"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "r" / "results.json").read_bytes() == (folder / "results.json").read_bytes()
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    first = json.loads((folder / "provenance.json").read_text())
    assert prov["images_merkle_root"] == first["images_merkle_root"] and prov["images_hashed"] == 204
    assert prov["image_listing_sha256"] == first["image_listing_sha256"]
    assert prov["engine"]["models"] and all(len(m["sha256"]) == 64 for m in prov["engine"]["models"])


def test_signed_report_and_tampering(london: tuple[Path, AuditConfig], tmp_path: Path) -> None:
    _, cfg = london
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    generate_key(key, pub)
    out = tmp_path / "signed"
    run_audit(dataclasses.replace(cfg, uncertainty=UncertaintyConfig(bootstrap=0, permutations=0)), out, sign=key,
              progress=False, echo=lambda m: None)
    assert verify_folder(out, pub).ok
    wrong_key, wrong_pub = tmp_path / "w.pem", tmp_path / "w.pub"
    generate_key(wrong_key, wrong_pub)
    assert not verify_folder(out, wrong_pub).ok
    html = out / "report.html"
    data = bytearray(html.read_bytes())
    data[len(data) // 2] ^= 1
    html.write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["verify-report", str(out), "--pubkey", str(pub)])
    assert res.exit_code == 1 and "report.html" in res.output


def test_embeddings_and_score_file_inputs_give_the_same_counts(london: tuple[Path, AuditConfig],
                                                               tmp_path: Path) -> None:
    """The same comparisons audited three ways (engine, embeddings file, another system's scores) agree."""
    folder, cfg = london
    emb_path = tmp_path / "emb.parquet"
    CliRunner().invoke(main, ["embed", str(bundled_manifest()), "--out", str(emb_path), "--cache",
                              str(cfg.run.cache), "--quiet"])
    frame, _ = read_embeddings(emb_path)
    no_ci = UncertaintyConfig(bootstrap=0, permutations=0)
    from_emb = run_audit(dataclasses.replace(cfg, dataset=DatasetConfig(labels="x"), uncertainty=no_ci,
                                             system=dataclasses.replace(cfg.system, embeddings=str(emb_path))),
                         tmp_path / "a", progress=False, echo=lambda m: None).results
    e = np.stack(frame["embedding"].to_numpy())
    ia, ib = np.triu_indices(len(frame), k=1)
    ids = [f"img{i}" for i in range(len(frame))]
    pd.DataFrame({"id_a": np.array(ids)[ia], "id_b": np.array(ids)[ib],
                  "score": 1.0 - np.einsum("ij,ij->i", e[ia], e[ib])}).to_parquet(tmp_path / "scores.parquet")
    frame.assign(id=ids)[["id", "subject_id", "sex", "race"]].to_csv(tmp_path / "ids.csv", index=False)
    res = CliRunner().invoke(main, ["audit", str(tmp_path / "ids.csv"), "--scores", str(tmp_path / "scores.parquet"),
                                    "--distance", "--by", "sex", "--by", "race", "--intersect", "sex,race",
                                    "--fmr", "1e-2", "--fmr", "1e-3", "--system-name", "Vendor X",
                                    "--out", str(tmp_path / "b"), "--quiet"])
    assert res.exit_code == 0, res.output
    from_scores = _results(tmp_path / "b")
    assert from_scores["audit"]["system"]["name"] == "Vendor X"
    reference = _results(folder)
    for doc in (from_emb, from_scores):
        for a, ref in zip(doc["analyses"], reference["analyses"], strict=True):
            for op, rop in zip(a["operating_points"], ref["operating_points"], strict=True):
                got = [(g["false_matches"], g["impostor_pairs"], g["false_non_matches"]) for g in op["groups"]]
                assert got == [(g["false_matches"], g["impostor_pairs"], g["false_non_matches"])
                               for g in rop["groups"]]


def test_pair_list_dataset_compares_only_the_listed_pairs(london: tuple[Path, AuditConfig], tmp_path: Path) -> None:
    _, cfg = london
    table = pd.read_csv(bundled_manifest(), dtype=str)
    photos = table.groupby("subject_id")["path"].apply(list)
    rows = [(a, b, 1) for a, b in photos.iloc[:30]]  # both photos of 30 people
    firsts = [p[0] for p in photos]
    rows += [(firsts[i], firsts[i + 1 + k], 0) for i in range(60) for k in range(5)]  # 300 impostor pairs
    rows += [("images/nobody.jpg", firsts[0], 0), (firsts[5], "./" + firsts[5], 1), (firsts[0], firsts[99], 1)]
    pd.DataFrame(rows, columns=["p1", "p2", "label"]).to_csv(tmp_path / "pairs.csv", index=False)
    out = run_audit(dataclasses.replace(cfg, dataset=dataclasses.replace(
        cfg.dataset, format="pairs", pairs=str(tmp_path / "pairs.csv")), metrics=MetricsConfig(target_fmrs=(0.1,))),
        tmp_path / "r", progress=False, echo=lambda m: None)
    doc = out.results
    op = doc["analyses"][0]["operating_points"][0]
    assert op["impostor_pairs"] == 301 and sum(g["genuine_pairs"] for g in op["groups"]) == 30
    left = {x["reason"]: x["count"] for x in doc["audit"]["left_out"] if x["what"] == "pairs"}
    assert left == {"image_not_listed": 1, "same_image": 1}
    assert any("contrary to their subject ids" in n for n in doc["audit"]["notes"])  # the (0, 2) pair
    assert doc["uncertainty"]["method"] is None


def _bad_dataset(tmp_path: Path) -> Path:
    """London crops plus one missing file, one unreadable file, and a lone person in a group of their own."""
    src = bundled_manifest().parent
    shutil.copytree(src / "images", tmp_path / "images")
    table = pd.read_csv(bundled_manifest(), dtype=str, keep_default_na=False)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")
    extra = pd.DataFrame([
        {"path": "images/missing.jpg", "subject_id": "900", "sex": "F", "race": "White"},
        {"path": "images/broken.jpg", "subject_id": "900", "sex": "F", "race": "White"},
        {"path": table["path"][0], "subject_id": "901", "sex": "M", "race": "Lone"},
    ])
    extra.loc[2, "path"] = "images/lone.jpg"
    Image.open(src / table["path"][0]).save(tmp_path / "images" / "lone.jpg")
    pd.concat([table, extra], ignore_index=True).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv"


def test_bad_input_is_left_out_and_reported(tmp_path: Path) -> None:
    manifest = _bad_dataset(tmp_path)
    res = CliRunner().invoke(main, ["audit", str(manifest), "--by", "sex", "--by", "race", "--by", "skin_tone",
                                    "--fmr", "1e-2", "--fmr", "1e-7", "--bootstrap", "50", "--permutations", "0",
                                    "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "skin_tone" in res.output  # warned
    doc = _results(tmp_path / "r")
    left = {(x["what"], x["reason"]): x["count"] for x in doc["audit"]["left_out"]}
    assert left[("analysis", next(r for w, r in left if w == "analysis"))] == 1
    assert left[("images", "missing_file")] == 1 and left[("images", "not_an_image")] == 1
    failed = pd.read_csv(tmp_path / "r" / "left_out.csv")
    assert sorted(failed["reason"]) == ["missing_file", "not_an_image"]
    kinds = {x["kind"] for x in _limitations(doc)}
    assert {"one_subject", "small_group", "target_skipped", "left_out", "zero_errors"} <= kinds
    html = (tmp_path / "r" / "report.html").read_text()
    assert "race=Lone has a single person" in html and "missing_file" in html
    assert [a["attributes"] for a in doc["analyses"]] == [["sex"], ["race"]]


def _limitations(doc: dict[str, Any]) -> list[dict[str, str]]:
    from faceaudit.report.findings import limitations

    return limitations(doc)


def test_no_genuine_pairs_still_reports_false_matches(london: tuple[Path, AuditConfig], tmp_path: Path) -> None:
    _, cfg = london
    table = pd.read_csv(bundled_manifest(), dtype=str, keep_default_na=False)
    one_each = table.drop_duplicates("subject_id").assign(path=lambda t: [str(bundled_manifest().parent / p)
                                                                           for p in t["path"]])
    one_each.to_csv(tmp_path / "one.csv", index=False)
    out = run_audit(dataclasses.replace(cfg, dataset=DatasetConfig(path=str(tmp_path / "one.csv")),
                                        metrics=MetricsConfig(target_fmrs=(1e-1, 1e-2))),
                    tmp_path / "r", progress=False, echo=lambda m: None)
    op = out.results["analyses"][0]["operating_points"][0]
    assert op["fnmr"] is None and op["impostor_pairs"] == 102 * 101 // 2
    assert "no_genuine" in {x["kind"] for x in _limitations(out.results)}
    assert "labels" in {x["kind"] for x in _limitations(out.results)}  # no label provenance stated
    # UTKFace-style data (one photo per person) still gets its false match differential, with an interval
    by_sex = out.results["analyses"][0]
    assert by_sex["attributes"] == ["sex"]
    for op in by_sex["operating_points"]:
        s = op["summary"]
        rates = [g["fmr"] for g in op["groups"] if g["impostor_pairs"] > 0]
        zero = [3 / g["impostor_pairs"] for g in op["groups"] if g["impostor_pairs"] > 0 and g["false_matches"] == 0]
        if not zero:
            assert s["fpd"] == pytest.approx(max(rates) / min(rates))
            assert s["fmr_gap"] == pytest.approx(max(rates) - min(rates))
        assert s["groups_fmr"] == ["sex=F", "sex=M"] and s["groups_fnmr"] == [] and s["unmeasured"] == ["fnmr"]
        assert s["fnd"] is None and s["ir"] is None and s["fdr"] is None and s["ser"] is None
        lo, hi = s["ci"]["fpd"]
        assert lo <= s["fpd"] <= hi
        assert op["permutation_test"]["fpd_p_value"] is not None and op["permutation_test"]["fnd_p_value"] is None
    words = (tmp_path / "r" / "summary.md").read_text()
    assert "cannot measure who is wrongly rejected" in words
    assert "cannot measure who is wrongly rejected" in (tmp_path / "r" / "report.html").read_text()


def test_refuses_to_overwrite_a_folder_that_is_not_a_report(london: tuple[Path, AuditConfig], tmp_path: Path) -> None:
    _, cfg = london
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not a faceaudit report"):
        run_audit(cfg, tmp_path / "mine", progress=False, echo=lambda m: None)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_unusable_groups_and_bad_config_are_clear_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["audit", str(bundled_manifest()), "--by", "skin", "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "skin" in res.output and "label columns" in res.output
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "a.toml"
    bad.write_text('[groups]\nby = "sex"\n')
    res = CliRunner().invoke(main, ["audit", "--config", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "[groups].by: expected a list" in res.output
    res = CliRunner().invoke(main, ["audit", str(bundled_manifest()), "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "needs groups" in res.output


@needs_chromium
def test_report_renders_in_headless_chromium(london: tuple[Path, AuditConfig], tmp_path: Path) -> None:
    """Every section is rendered and every plot decodes, in a real browser; a screenshot is kept for people."""
    from selenium.webdriver.common.by import By

    folder, _ = london
    with chromium(tmp_path / "profile") as driver:
        driver.get((folder / "report.html").resolve().as_uri())
        for section in SECTIONS:
            el = driver.find_element(By.ID, section)
            assert el.is_displayed() and el.size["height"] > 20, section
        plots = driver.find_elements(By.CSS_SELECTOR, "img.plot")
        assert len(plots) == 18
        for img in plots:
            w = driver.execute_script("return arguments[0].complete ? arguments[0].naturalWidth : 0", img)
            assert w > 300 and img.is_displayed(), img.get_attribute("data-plot")
        height = int(driver.execute_script("return document.body.scrollHeight"))
        driver.set_window_size(1200, min(height, 12000))
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"), np.float64)
    assert pixels.shape[1] >= 1000 and pixels.std() > 10  # a page with content, not a blank one


def test_killed_audit_writes_nothing_and_the_rerun_resumes(tmp_path: Path) -> None:
    """SIGKILL mid-embedding: no report folder appears; the rerun reuses the cached images and completes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from faceaudit.engines.cache import EmbeddingCache

    env = {**os.environ, "FACEAUDIT_CACHE_DIR": str(tmp_path / "cache")}
    cache = tmp_path / "cache" / "embeddings.sqlite"
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "faceaudit.cli", "audit", str(bundled_manifest()), "--by", "sex", "--fmr", "1e-2",
           "--bootstrap", "0", "--permutations", "0", "--workers", "1", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, done = time.time() + 120, 0
    while time.time() < deadline and proc.poll() is None:
        if cache.exists():
            with EmbeddingCache(cache) as c:
                done = len(c)
            if done >= 20:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 20 <= done < 204, "the audit finished before it could be interrupted"
    assert not out.exists() and not list(tmp_path.glob(".report*"))
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["images_from_cache"] >= done and verify_folder(out).ok
