"""Mitigation in the audit: [mitigation] / --mitigate, results.json's section, the report's "What would reduce the
differential", refusals with their reasons, and a byte-identical rerun from the written config.toml.

The bundled London set is small (102 people, two photos each): two folds and two clusters let FSN and FairCal be
fitted, while group thresholds are refused for the small race groups and FMR 1e-3 is skipped (a held-out fold has
too few impostor pairs): the refusals are part of what is tested.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from faceaudit.audit.config import (
    AuditConfig,
    DatasetConfig,
    GroupsConfig,
    MetricsConfig,
    MitigationConfig,
    RunConfig,
    UncertaintyConfig,
)
from faceaudit.audit.run import run_audit
from faceaudit.cli import main
from faceaudit.demo import bundled_manifest
from faceaudit.errors import InputError
from faceaudit.io.embeddings import read_embeddings
from faceaudit.report.integrity import verify_folder
from tests_paths import SCHEMA

METHODS = ("group_thresholds", "fsn", "faircal")


def _quiet(_: str) -> None:
    return None


def _config(cache: Path) -> AuditConfig:
    return AuditConfig(
        title="mitigation audit",
        dataset=DatasetConfig(path=str(bundled_manifest()), labels="self-reported"),
        groups=GroupsConfig(by=("sex", "race")),
        metrics=MetricsConfig(target_fmrs=(1e-2, 1e-3)),
        uncertainty=UncertaintyConfig(bootstrap=100, permutations=0, seed=5),
        mitigation=MitigationConfig(methods=METHODS, folds=2, n_clusters=2),
        run=RunConfig(cache=str(cache), workers=1),
    )


@pytest.fixture(scope="module")
def london(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AuditConfig]:
    base = tmp_path_factory.mktemp("mitigation")
    cfg = _config(base / "cache.sqlite")
    run_audit(cfg, base / "report", progress=False, echo=_quiet)
    return base / "report", cfg


@pytest.fixture(scope="module")
def embeddings(london: tuple[Path, AuditConfig], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, cfg = london
    path = tmp_path_factory.mktemp("emb") / "emb.parquet"
    res = CliRunner().invoke(main, ["embed", str(bundled_manifest()), "--out", str(path), "--cache",
                                    str(cfg.run.cache), "--quiet"])
    assert res.exit_code == 0, res.output
    return path


def _results(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((folder / "results.json").read_text())
    return doc


def _schema_valid(doc: dict[str, Any]) -> None:
    import jsonschema

    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))


def test_results_have_the_mitigation_section(london: tuple[Path, AuditConfig]) -> None:
    folder, _ = london
    doc = _results(folder)
    _schema_valid(doc)
    assert doc["schema_version"] == "1.3"
    m = doc["mitigation"]
    assert m["methods"] == list(METHODS) and m["folds"] == 2 and m["n_clusters"] == 2
    assert m["seed"] == 5 and m["replicates"] == 100 and m["refused"] is None
    assert [a["attributes"] for a in m["analyses"]] == [["sex"], ["race"]]
    by_attr = {tuple(a["attributes"]): a["result"] for a in m["analyses"]}
    for attrs, res in by_attr.items():
        assert res is not None, attrs
        assert res["settings"]["seed"] == 5 and res["settings"]["folds"] == 2
        assert all(f["subjects_in_both"] == 0 for f in res["folds"])
        assert sum(f["held_out_subjects"] for f in res["folds"]) == 102
        # FMR 1e-3 needs more impostor pairs than a held-out fold of ~51 people has: skipped, with the reason
        assert [s["target_fmr"] for s in res["skipped_targets"]] == [1e-3]
        assert "expected false matches" in res["skipped_targets"][0]["reason"]
        (op,) = res["operating_points"]
        assert op["target_fmr"] == 1e-2 and [x["method"] for x in op["methods"]] == list(METHODS)
        assert {g["group"] for g in op["unmitigated"]["groups"]} == set(res["groups"])
        for x in op["methods"]:
            if x["method"] == "group_thresholds":
                assert x["needs_labels_at_decision"]
            if x["refused"] is None:
                diff = x["difference"]
                assert diff["replicates"] == 100 and diff["tar"]["call"] in (
                    "lower", "higher", "no clear difference")
                assert all(g["fmr_call"] in ("lower", "higher", "no clear difference", "not computed")
                           for g in diff["groups"])
    fsn = next(x for x in by_attr[("sex",)]["operating_points"][0]["methods"] if x["method"] == "fsn")
    assert fsn["refused"] is None and fsn["system"]["summary"]["fpd"] is not None
    gt_race = next(x for x in by_attr[("race",)]["operating_points"][0]["methods"] if x["method"] == "group_thresholds")
    assert gt_race["refused"]["reason"] == "group_too_small" and gt_race["system"] is None
    assert "too few calibration impostor pairs" in gt_race["refused"]["message"]


def test_report_and_summary_show_what_would_reduce_the_differential(london: tuple[Path, AuditConfig]) -> None:
    folder, _ = london
    html = (folder / "report.html").read_text()
    section = html[html.index('<section id="mitigation">'):html.index('<section id="enrolment">')]
    assert "What would reduce the differential" in section and 'href="#mitigation"' in html
    for text in ("Group thresholds", "Fair Score Normalization (FSN)", "FairCal", "FMR before", "FNMR after",
                 "TAR (everyone)", "FPD", "often unlawful", "held-out", "calibration and thresholds fixed",
                 'data-refused="group_too_small"', "expected false matches", "sex=F", "race="):
        assert text in section, text
    measured = [x for a in _results(folder)["mitigation"]["analyses"] for op in a["result"]["operating_points"]
                for x in op["methods"] if x["refused"] is None]
    assert section.count('class="mitigation-groups"') == len(measured) == 5  # sex: all 3; race: FSN and FairCal
    summary = (folder / "summary.md").read_text()
    part = summary[summary.index("## What would reduce the differential"):summary.index("## Limitations")]
    assert "### By sex, target FMR 0.01" in part and "### By race, target FMR 0.01" in part
    assert "refused:" in part and "group\\_too\\_small" in part and "often unlawful" in part
    assert "TAR before → after" in part and "FPD before → after" in part
    assert verify_folder(folder).ok


def test_rerunning_the_written_config_gives_the_same_results_byte_for_byte(london: tuple[Path, AuditConfig],
                                                                          tmp_path: Path) -> None:
    folder, _ = london
    written = tomllib.loads((folder / "config.toml").read_text())
    assert written["mitigation"] == {"methods": list(METHODS), "folds": 2, "n_clusters": 2}
    again = CliRunner().invoke(main, ["audit", "--config", str(folder / "config.toml"), "--out", str(tmp_path / "r"),
                                      "--quiet"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "r" / "results.json").read_bytes() == (folder / "results.json").read_bytes()


def test_score_file_audit_records_the_refusal(embeddings: Path, tmp_path: Path) -> None:
    import numpy as np

    frame, _ = read_embeddings(embeddings)
    e = np.stack([np.asarray(v, np.float32) for v in frame["embedding"]])
    ia, ib = np.triu_indices(len(frame), k=1)
    ids = np.array([f"img{i}" for i in range(len(frame))])
    pd.DataFrame({"id_a": ids[ia], "id_b": ids[ib], "score": np.einsum("ij,ij->i", e[ia], e[ib])}).to_csv(
        tmp_path / "scores.csv", index=False)
    frame.assign(id=ids)[["id", "subject_id", "sex", "race"]].to_csv(tmp_path / "ids.csv", index=False)
    res = CliRunner().invoke(main, ["audit", str(tmp_path / "ids.csv"), "--scores", str(tmp_path / "scores.csv"),
                                    "--by", "sex", "--fmr", "1e-2", "--mitigate", "faircal", "--out",
                                    str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "mitigation not measured" in res.output
    doc = _results(tmp_path / "out")
    _schema_valid(doc)
    m = doc["mitigation"]
    assert m["methods"] == ["faircal"] and m["analyses"] == []
    assert m["refused"]["reason"] == "needs_embeddings" and "score file" in m["refused"]["message"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'data-refused="needs_embeddings"' in html
    assert "Not measured: mitigation not measured: a score file" in (tmp_path / "out" / "summary.md").read_text()


def test_sampled_impostor_pairs_record_the_refusal(london: tuple[Path, AuditConfig], embeddings: Path,
                                                   tmp_path: Path) -> None:
    _, cfg = london
    sampled = dataclasses.replace(cfg, dataset=DatasetConfig(labels="x"),
                                  system=dataclasses.replace(cfg.system, embeddings=str(embeddings)),
                                  pairs=dataclasses.replace(cfg.pairs, impostor_sample=0.5))
    doc = run_audit(sampled, tmp_path / "s", progress=False, echo=_quiet).results
    _schema_valid(doc)
    assert doc["mitigation"]["refused"]["reason"] == "sampled"


def test_cli_flag_from_embeddings_and_labels_escaped(embeddings: Path, tmp_path: Path) -> None:
    frame, _ = read_embeddings(embeddings)
    hostile = "<script>alert(1)</script>"
    frame = frame[frame["ok"]].assign(sex=frame["sex"].replace({"F": hostile}))
    path = tmp_path / "hostile.parquet"  # another system's vectors (the foreign-embeddings layout)
    frame[["path", "subject_id", "sex", "race", "embedding"]].to_parquet(path)
    toml = tmp_path / "audit.toml"  # the flags replace the file's methods; its folds and clusters stay
    toml.write_text('[mitigation]\nmethods = ["group_thresholds"]\nfolds = 2\nn_clusters = 2\n')
    res = CliRunner().invoke(main, ["audit", "--config", str(toml), "--embeddings", str(path), "--system-name",
                                    "Vendor <i>Y</i>", "--by", "sex", "--fmr", "1e-2",
                                    "--bootstrap", "50", "--permutations", "0", "--mitigate", "fsn",
                                    "--mitigate", "faircal", "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 0, res.output
    doc = _results(tmp_path / "r")
    _schema_valid(doc)
    m = doc["mitigation"]
    assert m["methods"] == ["fsn", "faircal"] and m["folds"] == 2 and m["n_clusters"] == 2
    (a,) = m["analyses"]
    assert a["attributes"] == ["sex"] and a["refused"] is None
    assert hostile in a["result"]["groups"][0]  # the label as given in results.json
    five = CliRunner().invoke(main, ["audit", "--embeddings", str(path), "--system-name", "Y", "--by", "sex",
                                     "--fmr", "1e-2", "--bootstrap", "0", "--permutations", "0", "--mitigate", "fsn",
                                     "--out", str(tmp_path / "five"), "--quiet"])
    assert five.exit_code == 0, five.output
    (a5,) = _results(tmp_path / "five")["mitigation"]["analyses"]  # default 5 folds of ~20 people: too few pairs
    assert a5["result"] is None and a5["refused"]["reason"] == "too_few_subjects"
    assert "expected false matches" in a5["refused"]["message"]
    assert 'data-refused="too_few_subjects"' in (tmp_path / "five" / "report.html").read_text()
    written = tomllib.loads((tmp_path / "r" / "config.toml").read_text())
    assert written["mitigation"]["methods"] == ["fsn", "faircal"]
    html = (tmp_path / "r" / "report.html").read_text()
    assert hostile not in html and "&lt;script&gt;" in html
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert hostile not in summary
    bad = CliRunner().invoke(main, ["audit", "--embeddings", str(path), "--system-name", "Y", "--by", "sex",
                                    "--mitigate", "magic",
                                    "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "[mitigation] methods" in bad.output and "'magic'" in bad.output


def test_pair_list_audit_records_the_refusal(london: tuple[Path, AuditConfig], tmp_path: Path) -> None:
    _, cfg = london
    table = pd.read_csv(bundled_manifest(), dtype=str)
    photos = table.groupby("subject_id")["path"].apply(list)
    rows = [(a, b, 1) for a, b in photos.iloc[:30]]
    firsts = [p[0] for p in photos]
    rows += [(firsts[i], firsts[i + 1 + k], 0) for i in range(60) for k in range(5)]
    pd.DataFrame(rows, columns=["p1", "p2", "label"]).to_csv(tmp_path / "pairs.csv", index=False)
    listed = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, format="pairs",
                                                                  pairs=str(tmp_path / "pairs.csv")),
                                 metrics=MetricsConfig(target_fmrs=(0.1,)))
    doc = run_audit(listed, tmp_path / "r", progress=False, echo=_quiet).results
    _schema_valid(doc)
    assert doc["mitigation"]["refused"]["reason"] == "pair_list"
    assert "pair list" in doc["mitigation"]["refused"]["message"]


@pytest.mark.parametrize(("raw", "message"), [
    ({"mitigation": {"method": ["fsn"]}}, "unknown key(s) 'method'"),
    ({"mitigation": {"methods": ["fsm"]}}, "[mitigation] methods: unknown method(s) 'fsm'"),
    ({"mitigation": {"methods": "fsn"}}, "[mitigation].methods: expected a list"),
    ({"mitigation": {"methods": ["fsn", "fsn"]}}, "names a method twice"),
    ({"mitigation": {"folds": 1}}, "[mitigation] folds must be at least 2"),
    ({"mitigation": {"n_clusters": 0}}, "[mitigation] n_clusters must be at least 1"),
    ({"mitigation": {"methods": ["fsn"]}, "system": {"engine": ["a", "b"]}}, "comparing engines"),
])
def test_mitigation_config_is_checked(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as err:
        cfg = AuditConfig.from_dict({"dataset": {"path": "x.csv"}, "groups": {"by": ["sex"]}, **raw})
        cfg.check()
    assert message in str(err.value)


def test_default_is_off_and_example_documents_it() -> None:
    cfg = AuditConfig.from_dict({"dataset": {"path": "x.csv"}, "groups": {"by": ["sex"]}})
    cfg.check()
    assert cfg.mitigation == MitigationConfig() and cfg.mitigation.methods == ()
    example = (Path(__file__).resolve().parents[1] / "examples" / "audit.toml").read_text()
    assert "[mitigation]" in example and '"group_thresholds", "fsn", "faircal"' in example
