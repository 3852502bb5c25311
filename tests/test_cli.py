"""The command line, run as a user would: exit codes, text and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from click.testing import CliRunner
from PIL import Image

from faceaudit.cli import main
from imagegen import padded


def _pair(tiny: pd.DataFrame, sid: str) -> list[str]:
    return list(tiny.loc[tiny["subject_id"] == sid, "file"])


def test_verify_same_and_different_person(tiny: pd.DataFrame) -> None:
    runner = CliRunner()
    a1, a2 = _pair(tiny, "001")
    b1, _ = _pair(tiny, "002")
    same = runner.invoke(main, ["verify", a1, a2, "--json"])
    assert same.exit_code == 0, same.output
    res = json.loads(same.output)
    assert res["match"] is True and res["score"] >= res["threshold"]
    assert res["target_fmr"] == 1e-4 and 0.3 < res["threshold"] < 0.6
    assert abs(res["calibrated_fmr"] - 1e-4) / 1e-4 < 0.2  # interpolated on a 20-per-decade grid
    diff = runner.invoke(main, ["verify", a1, b1])
    assert diff.exit_code == 0 and diff.output.startswith("NO MATCH"), diff.output
    loose = runner.invoke(main, ["verify", a1, b1, "--fmr", "1e-2", "--json"])
    assert json.loads(loose.output)["threshold"] < res["threshold"]


def test_verify_without_a_face_exits_1_with_reason(tiny: pd.DataFrame, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (90, 90, 90)).save(blank)
    out = CliRunner().invoke(main, ["verify", tiny["file"][0], str(blank)])
    assert out.exit_code == 1 and "B: no_face" in out.output


def test_verify_refuses_an_unsupported_fmr(tiny: pd.DataFrame) -> None:
    out = CliRunner().invoke(main, ["verify", tiny["file"][0], tiny["file"][1], "--fmr", "1e-9"])
    assert out.exit_code == 1 and "below what the calibration supports" in out.output


def test_detect_json_and_unreadable(tiny: pd.DataFrame, tmp_path: Path) -> None:
    img = tmp_path / "face.jpg"
    padded(Image.open(tiny["file"][0]).convert("RGB")).save(img)
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    out = CliRunner().invoke(main, ["detect", str(img), str(bad), "--json"])
    assert out.exit_code == 1
    items = json.loads(out.output)
    assert items[0]["ok"] and len(items[0]["faces"]) == 1
    face = items[0]["faces"][0]
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and face["score"] > 0.6
    assert items[1]["reason"] == "not_an_image"


def test_embed_command_and_engines(tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.parquet"
    res = CliRunner().invoke(main, ["embed", str(tiny_manifest), "--out", str(out), "--quiet", "--no-cache"])
    assert res.exit_code == 0, res.output
    assert "204 images: 204 embedded, 0 failed" in res.output
    df = pd.read_parquet(out)
    assert set(df.columns) >= {"path", "subject_id", "sha256", "ok", "reason", "embedding", "det_score", "sex", "race"}
    eng = CliRunner().invoke(main, ["engines", "--json"])
    assert json.loads(eng.output)[0]["name"] == "yunet-sface"


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,who\n")
    res = CliRunner().invoke(main, ["embed", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o.parquet")])
    assert res.exit_code == 1 and "missing column(s) path, subject_id" in res.output
