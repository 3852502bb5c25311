"""A deployable fairness calibration: the artefact (fit, save, load, checks) and its use in verify, the gallery and
the service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import faceaudit
from faceaudit.cli import main
from faceaudit.demo import bundled_manifest
from faceaudit.errors import CalibrationError, InputError
from faceaudit.gallery.gallery import Consent, Gallery
from faceaudit.io.embeddings import embedding_matrix, read_embeddings, write_embeddings
from faceaudit.mitigation import FairScoreNormalization, threshold_at_fmr
from faceaudit.mitigation.artefact import (
    DeployedCalibration,
    content_sha256,
    fit_artefact,
    load_calibration,
    save_calibration,
    score_calibrated,
)
from faceaudit.service.app import create_app
from service_support import SEARCH, auth, faces, make_setup
from tests_paths import SCHEMA

TARGET = 1e-3


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fairness-calibration")


@pytest.fixture(scope="module")
def embeddings(work: Path) -> Path:
    """The bundled faces' embeddings (default engine): 204 images of 102 people."""
    out = work / "london.parquet"
    faceaudit.embed(bundled_manifest(), out, workers=1, cache=False)
    return out


@pytest.fixture(scope="module")
def cal_path(work: Path, embeddings: Path) -> Path:
    """A FairCal artefact written by the CLI."""
    out = work / "faircal.json"
    r = CliRunner().invoke(main, ["calibrate", "--method", "faircal", "--embeddings", str(embeddings), "--out",
                                  str(out), "--target-fmr", str(TARGET), "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert "faircal:" in r.output and "sha256" in r.output
    return out


@pytest.fixture(scope="module")
def other_engine_path(work: Path, embeddings: Path) -> Path:
    """A calibration fitted on the same vectors recorded as another engine's (another model file)."""
    df, meta = read_embeddings(embeddings)
    meta = json.loads(json.dumps(meta))
    meta["engine"]["models"][0]["sha256"] = "0" * 64
    other = work / "other.parquet"
    write_embeddings(df, other, meta)
    out = work / "other-engine.json"
    save_calibration(fit_artefact(other, "fsn", target_fmrs=(1e-2,)), out)
    return out


def _pairs(embeddings: Path, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    df, _ = read_embeddings(embeddings)
    e = embedding_matrix(df)
    rng = np.random.default_rng(0)
    i, j = rng.integers(len(e), size=n), rng.integers(len(e), size=n)
    return e[i], e[j]


@pytest.mark.parametrize(("method", "fmrs"), [("faircal", (1e-3, 1e-2)), ("fsn", (1e-2,))])
def test_round_trip_gives_identical_scores(embeddings: Path, tmp_path: Path, method: str,
                                           fmrs: tuple[float, ...]) -> None:
    fitted = fit_artefact(embeddings, method, target_fmrs=fmrs, seed=1)
    path = save_calibration(fitted, tmp_path / "cal.json")
    loaded = load_calibration(path)
    assert loaded.identity == fitted.identity and loaded.identity.method == method
    assert loaded.identity.sha256 == json.loads(path.read_text())["sha256"] == content_sha256(loaded.document)
    a, b = _pairs(embeddings)
    assert np.array_equal(score_calibrated(loaded, a, b), score_calibrated(fitted, a, b))
    assert np.array_equal(score_calibrated(loaded, a, b), score_calibrated(fitted.calibration, a, b))
    assert loaded.thresholds == fitted.thresholds and set(loaded.thresholds) == set(fmrs)
    assert loaded.calibration.to_dict() == fitted.calibration.to_dict()
    doc = loaded.document
    assert doc["format_version"] == 1 and doc["method"] == method and len(doc["parameters"]["centres"]) >= 2
    assert doc["engine"] == read_embeddings(embeddings)[1]["engine"]
    assert doc["dataset"]["path"] == str(embeddings.resolve()) and len(doc["dataset"]["sha256"]) == 64
    # the calibrated threshold at each target gives at most that FMR on the calibration pairs
    for f, (t, achieved, _) in loaded.thresholds.items():
        assert achieved <= f and loaded.threshold_for(f) == t
    # same data and seed, same artefact
    assert fit_artefact(embeddings, method, target_fmrs=fmrs, seed=1).identity == fitted.identity


def test_calibrated_scores_follow_the_method_by_hand(embeddings: Path) -> None:
    cal = fit_artefact(embeddings, "fsn", target_fmrs=(1e-2,))
    fsn = cal.calibration
    assert isinstance(fsn, FairScoreNormalization)
    a, b = _pairs(embeddings, 20)
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    ca = np.argmin(((ua[:, None, :] - fsn.centres[None]) ** 2).sum(-1), axis=1)
    cb = np.argmin(((ub[:, None, :] - fsn.centres[None]) ** 2).sum(-1), axis=1)
    offsets = fsn.cluster_thresholds - fsn.global_threshold
    expected = (ua * ub).sum(1) - (offsets[ca] + offsets[cb]) / 2
    assert np.allclose(score_calibrated(cal, a, b), expected, atol=1e-6)


def test_an_edited_artefact_is_refused(cal_path: Path, tmp_path: Path) -> None:
    doc = json.loads(cal_path.read_text())
    doc["thresholds"][0]["threshold"] *= 0.5
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    with pytest.raises(CalibrationError, match="altered"):
        load_calibration(edited)
    doc = json.loads(cal_path.read_text())
    doc["parameters"]["beta_maps"][0][0] += 1e-9
    edited.write_text(json.dumps(doc, indent=1))
    with pytest.raises(CalibrationError, match="altered"):
        load_calibration(edited)
    # a verification-threshold calibration is not a fairness calibration
    engine_table = tmp_path / "thresholds.json"
    engine_table.write_text(json.dumps({"engine": "x", "table": []}))
    with pytest.raises(CalibrationError, match="not a fairness calibration"):
        load_calibration(engine_table)
    # re-indenting keeps the content, and the check
    doc = json.loads(cal_path.read_text())
    edited.write_text(json.dumps(doc))
    assert load_calibration(edited).identity.sha256 == doc["sha256"]


def test_a_calibration_for_another_engine_is_refused(other_engine_path: Path, tiny: pd.DataFrame,
                                                     tmp_path: Path) -> None:
    engine = faceaudit.load_engine()
    with pytest.raises(CalibrationError, match="was fitted for engine"):
        load_calibration(other_engine_path, engine.identity)
    with pytest.raises(CalibrationError, match="was fitted for engine"):
        faceaudit.verify(tiny["file"][0], tiny["file"][1], calibration=other_engine_path)
    r = CliRunner().invoke(main, ["verify", tiny["file"][0], tiny["file"][1], "--calibration", str(other_engine_path)])
    assert r.exit_code != 0 and "was fitted for engine" in r.output
    key = tmp_path / "gallery.key"
    assert CliRunner().invoke(main, ["gallery", "keygen", str(key)]).exit_code == 0
    Gallery.init(tmp_path / "g", key_file=key, actor="test").close()
    with pytest.raises(CalibrationError, match="was fitted for engine"):
        Gallery.open(tmp_path / "g", key_file=key, calibration=other_engine_path)


def test_the_artefact_refuses_what_it_cannot_fit(embeddings: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="one of fsn, faircal"):
        fit_artefact(embeddings, "group_thresholds")
    with pytest.raises(InputError, match="one --target-fmr"):
        fit_artefact(embeddings, "fsn", target_fmrs=(1e-2, 1e-3))
    with pytest.raises(InputError, match="below what"):
        fit_artefact(embeddings, "faircal", target_fmrs=(1e-6,))
    r = CliRunner().invoke(main, ["calibrate", "--embeddings", str(embeddings), "--out", str(tmp_path / "x.json"),
                                  "--clusters", "2"])
    assert r.exit_code != 0 and "go with --method" in r.output
    # vectors not made by a faceaudit engine: no engine to fit the calibration for
    df, meta = read_embeddings(embeddings)
    anonymous = tmp_path / "anonymous.parquet"
    write_embeddings(df, anonymous, {k: v for k, v in meta.items() if k != "engine"})
    r = CliRunner().invoke(main, ["calibrate", "--method", "faircal", "--embeddings", str(anonymous), "--out",
                                  str(tmp_path / "y.json")])
    assert r.exit_code != 0 and "not made by one" in r.output and not (tmp_path / "y.json").exists()


def test_cli_verify_with_a_calibration(cal_path: Path, tiny: pd.DataFrame) -> None:
    cal = load_calibration(cal_path)
    a1, a2 = tiny.loc[tiny["subject_id"] == "001", "file"].iloc[:2]
    b1 = tiny.loc[tiny["subject_id"] == "002", "file"].iloc[0]
    runner = CliRunner()
    for a, b, same in ((a1, a2, True), (a1, b1, False)):
        out = runner.invoke(main, ["verify", a, b, "--calibration", str(cal_path), "--json"])
        assert out.exit_code == 0, out.output
        res = json.loads(out.output)
        assert res["fairness_calibration"]["sha256"] == cal.identity.sha256
        assert res["fairness_calibration"]["method"] == "faircal"
        assert res["target_fmr"] == TARGET and res["threshold"] == cal.thresholds[TARGET][0]
        ea, eb = (faceaudit.embed_image(p)[0].embedding for p in (a, b))
        assert ea is not None and eb is not None
        assert res["score"] == pytest.approx(float(cal.score(ea, eb)[0]), abs=1e-9)
        assert res["raw_score"] == pytest.approx(float(np.dot(ea, eb)), abs=1e-6)
        assert res["match"] is same
    raw = json.loads(runner.invoke(main, ["verify", a1, a2, "--json"]).output)
    assert raw["fairness_calibration"] is None and raw["score"] == raw["raw_score"]
    text = runner.invoke(main, ["verify", a1, a2, "--calibration", str(cal_path)])
    assert text.exit_code == 0 and "calibrated with faircal" in text.output


def _gallery(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "gallery.key"
    assert CliRunner().invoke(main, ["gallery", "keygen", str(key)]).exit_code == 0
    folder = tmp_path / "g"
    with Gallery.init(folder, key_file=key, actor="test") as g:
        for subject, first, _ in faces()[:3]:
            g.enrol(subject, Consent("the person", "2026-01-05", "consent"), images=[first])
    return folder, key


def test_gallery_verify_with_a_calibration(cal_path: Path, tmp_path: Path) -> None:
    folder, key = _gallery(tmp_path)
    cal = load_calibration(cal_path)
    subject, first, second = faces()[0]
    with Gallery.open(folder, key_file=key, actor="test", calibration=cal_path) as g:
        assert isinstance(g.calibration, DeployedCalibration)
        r = g.verify(subject, image=second)
        wrong = g.verify(faces()[1][0], image=second)
        log = [json.loads(e) for _, e in g.store.log_rows()]
    ident = cal.provenance()
    assert r["calibration"] == ident and r["threshold"] == cal.thresholds[TARGET][0] and r["fmr"] == TARGET
    probe = faceaudit.embed_image(second)[0].embedding
    template = faceaudit.embed_image(first)[0].embedding
    assert probe is not None and template is not None
    assert r["score"] == pytest.approx(float(cal.score(probe, template)[0]), abs=1e-6)
    assert r["match"] is True and wrong["match"] is False
    verifies = [e for e in log if e["operation"] == "verify"]
    assert [e["params"]["calibration"] for e in verifies] == [ident, ident]
    # raw decisions say so: no calibration in the result or the log
    with Gallery.open(folder, key_file=key, actor="test") as g:
        raw = g.verify(subject, image=second)
        last = json.loads(g.store.log_rows()[-1][1])
    assert raw["calibration"] is None and "calibration" not in last["params"] and raw["threshold"] != r["threshold"]
    out = CliRunner().invoke(main, ["gallery", "verify", str(folder), "--key", str(key), subject,
                                    _write(tmp_path / "p.jpg", second), "--calibration", str(cal_path), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["calibration"]["sha256"] == cal.identity.sha256


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_gallery_search_with_a_calibration(cal_path: Path, tmp_path: Path) -> None:
    from faceaudit.gallery.policy import Policy

    folder, key = _gallery(tmp_path)
    cal = load_calibration(cal_path)
    with Gallery.open(folder, key_file=key, actor="test", role="admin") as g:
        g.set_policy(Policy.from_dict({"roles": {"investigator": ["search"], "admin": ["policy"]},
                                       "search": {"enabled": True, "purpose": "dedup", "legal_basis": "law",
                                                  "max_k": 5, "max_fpir": 0.5}}))
    subject, _, second = faces()[1]
    with Gallery.open(folder, key_file=key, actor="test", role="investigator", calibration=cal_path) as g:
        res = g.search(image=second, k=3, fpir=0.05, purpose="dedup", legal_basis="law")
        entry = json.loads(g.store.log_rows()[-1][1])
    assert res.calibration == cal.provenance() == entry["params"]["calibration"]
    assert res.threshold == cal.threshold_for(1 - (1 - 0.05) ** (1 / 3))
    assert res.candidates[0].subject_id == subject and res.candidates[0].match
    assert [c.score for c in res.candidates] == sorted((c.score for c in res.candidates), reverse=True)
    assert all(0.0 <= c.score <= 1.0 for c in res.candidates)  # FairCal scores are probabilities


@pytest.fixture
def served(cal_path: Path, tmp_path: Path) -> Iterator[tuple[Any, TestClient]]:
    setup = make_setup(tmp_path)
    with setup.open("operator") as g:
        g.enrol("enrolled", Consent("the person", "2026-01-05", "consent"), images=[faces()[0][1]])
    with TestClient(create_app(setup.settings(calibration=cal_path))) as client:
        yield setup, client


def test_service_answers_with_the_calibration(served: tuple[Any, TestClient], cal_path: Path) -> None:
    setup, client = served
    cal = load_calibration(cal_path)
    h = auth(setup.keys["operator"])
    _, first, second = faces()[0]
    pair = client.post("/v1/verify", headers=h, files={"image": ("a.jpg", second, "image/jpeg"),
                                                       "reference": ("b.jpg", first, "image/jpeg")})
    assert pair.status_code == 200, pair.text
    body = pair.json()
    assert body["calibration"] == cal.provenance() and body["match"] is True
    assert body["threshold"] == cal.thresholds[TARGET][0] and body["target_fmr"] == TARGET
    subject = client.post("/v1/verify", headers=h, data={"subject_id": "enrolled"},
                          files={"image": ("p.jpg", second, "image/jpeg")})
    assert subject.status_code == 200, subject.text
    assert subject.json()["calibration"]["sha256"] == cal.identity.sha256 and subject.json()["match"] is True
    other = client.post("/v1/verify", headers=h, data={"fmr": "0.01"},
                        files={"image": ("a.jpg", second, "image/jpeg"),
                               "reference": ("b.jpg", faces()[1][1], "image/jpeg")})
    assert other.status_code == 200 and other.json()["match"] is False
    assert other.json()["threshold"] == cal.threshold_for(0.01) and other.json()["calibration"] is not None
    found = client.post("/v1/search", headers=auth(setup.keys["investigator"]),
                        data={**SEARCH, "k": "3", "fpir": "0.01"}, files={"image": ("p.jpg", second, "image/jpeg")})
    assert found.status_code == 200, found.text
    assert found.json()["calibration"] == cal.provenance()
    assert found.json()["threshold"] == pytest.approx(cal.threshold_for(0.01))  # FMR from FPIR: 0.01 up to rounding
    assert found.json()["candidates"][0]["subject_id"] == "enrolled" and found.json()["candidates"][0]["match"]
    assert setup.settings(calibration=cal_path).to_env()["FACEAUDIT_SERVICE_CALIBRATION"] == str(cal_path.resolve())


# ------------------------------------------------------------------------------------------ an audit of it


def _audit(embeddings: Path, out: Path, *extra: str) -> Any:
    return CliRunner().invoke(main, ["audit", "--embeddings", str(embeddings), "--by", "sex", "--fmr", "1e-2",
                                     "--fmr", "1e-3", "--bootstrap", "0", "--permutations", "0", "--out", str(out),
                                     "--quiet", *extra])


def test_an_audit_of_the_calibrated_engine_counts_calibrated_scores(embeddings: Path, cal_path: Path,
                                                                    tmp_path: Path) -> None:
    """`faceaudit audit --calibration`: the threshold and every group's counts equal a brute-force count over all
    pairs of calibrated scores (:func:`score_calibrated`, pair by pair, not the audit's blocked comparison); the
    calibration's identity is in results.json, provenance.json, summary.md and report.html."""
    r = _audit(embeddings, tmp_path / "cal", "--calibration", str(cal_path))
    assert r.exit_code == 0, r.output
    raw = _audit(embeddings, tmp_path / "raw")
    assert raw.exit_code == 0, raw.output
    cal = load_calibration(cal_path)
    df, _ = read_embeddings(embeddings)
    ok = df[df["ok"]].reset_index(drop=True)
    e = embedding_matrix(df)
    i, j = np.triu_indices(len(e), k=1)
    s = score_calibrated(cal, e[i], e[j])
    subj, sex = ok["subject_id"].astype(str).to_numpy(), ok["sex"].astype(str).to_numpy()
    gen = subj[i] == subj[j]
    doc = json.loads((tmp_path / "cal" / "results.json").read_text())
    raw_doc = json.loads((tmp_path / "raw" / "results.json").read_text())
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert doc["settings"]["scores"].startswith("faircal calibrated score")
    ops, raw_ops = doc["analyses"][0]["operating_points"], raw_doc["analyses"][0]["operating_points"]
    assert len(ops) == 2
    for op, raw_op in zip(ops, raw_ops, strict=True):
        t = op["threshold"]
        assert t == pytest.approx(threshold_at_fmr(s[~gen], op["target_fmr"]), abs=1e-6)
        assert 0 < t < 1 and t != raw_op["threshold"]  # a probability, not a cosine
        for g in op["groups"]:
            label = g["group"].split("=", 1)[1]
            within = (sex[i] == label) & (sex[j] == label)
            imp, genu = s[within & ~gen], s[within & gen]
            assert g["impostor_pairs"] == len(imp) and g["genuine_pairs"] == len(genu)
            # the audit folds float32 scores: a float64 reference may differ only within float32 rounding of t
            assert int((imp >= t + 1e-6).sum()) <= g["false_matches"] <= int((imp >= t - 1e-6).sum())
            assert int((genu < t - 1e-6).sum()) <= g["false_non_matches"] <= int((genu < t + 1e-6).sum())
    system = doc["audit"]["system"]
    assert system["calibration"]["sha256"] == cal.identity.sha256 and "faircal calibrated" in system["name"]
    prov = json.loads((tmp_path / "cal" / "provenance.json").read_text())
    assert prov["calibration"]["sha256"] == cal.identity.sha256 and prov["files"]["calibration"]["path"] == \
        str(cal_path.resolve())
    assert json.loads((tmp_path / "raw" / "provenance.json").read_text())["calibration"] is None
    assert cal.identity.sha256 in (tmp_path / "cal" / "summary.md").read_text()
    assert cal.identity.sha256 in (tmp_path / "cal" / "report.html").read_text()
    assert "calibration = " in (tmp_path / "cal" / "config.toml").read_text()


def test_an_audit_refuses_a_calibration_it_cannot_apply(embeddings: Path, cal_path: Path, other_engine_path: Path,
                                                        tmp_path: Path) -> None:
    r = _audit(embeddings, tmp_path / "other", "--calibration", str(other_engine_path))
    assert r.exit_code != 0 and "was fitted for engine" in r.output and not (tmp_path / "other").exists()
    r = _audit(embeddings, tmp_path / "both", "--calibration", str(cal_path), "--mitigate", "fsn")
    assert r.exit_code != 0 and "run them as two audits" in r.output
    df, meta = read_embeddings(embeddings)
    anonymous = tmp_path / "anonymous.parquet"
    write_embeddings(df, anonymous, {k: v for k, v in meta.items() if k != "engine"})
    r = _audit(anonymous, tmp_path / "anon", "--calibration", str(cal_path))
    assert r.exit_code != 0 and "not made by a faceaudit engine" in r.output
