"""The audit config: TOML in, checked keys and types, flags override, written back and read again unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceaudit.audit.config import AuditConfig
from faceaudit.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_example_configs_parse_and_round_trip(tmp_path: Path) -> None:
    for name in ("audit.toml", "lfw.toml", "lfw-compare.toml"):
        cfg = AuditConfig.from_toml(ROOT / "examples" / name)
        cfg.check()
        assert cfg.groups.by == ("sex", "race")
        written = tmp_path / name
        written.write_text(cfg.to_toml())
        assert AuditConfig.from_toml(written) == cfg  # absolute paths survive the round trip
    lfw = AuditConfig.from_toml(ROOT / "examples" / "lfw.toml")
    assert lfw.dataset.path == str((ROOT.parent / "shared" / "data" / "lfw").resolve())  # relative to the file
    assert lfw.metrics.target_fmrs == (1e-3, 1e-4, 1e-5, 1e-6) and lfw.uncertainty.bootstrap == 1000
    compare = AuditConfig.from_toml(ROOT / "examples" / "lfw-compare.toml")
    assert compare.system.engines() == ["yunet-sface", "dlib-resnet"]  # a list: a side-by-side comparison


def test_defaults_and_groupings() -> None:
    cfg = AuditConfig.from_dict({"dataset": {"path": "x.csv"},
                                 "groups": {"by": ["sex", "race"], "intersections": [["sex", "race"], ["sex"]]}})
    cfg.check()
    assert cfg.groupings() == [["sex"], ["race"], ["sex", "race"]]  # repeats once
    assert cfg.uncertainty.seed == 0 and cfg.run.cache is True and cfg.pairs.impostor_sample is None


@pytest.mark.parametrize(("raw", "message"), [
    ({"datset": {}}, "unknown key(s) 'datset'"),
    ({"groups": {"by": "sex"}}, "[groups].by: expected a list"),
    ({"groups": {"by": ["sex", 3]}}, "[groups].by[1]: expected text"),
    ({"metrics": {"alpha": "half"}}, "[metrics].alpha: expected a number"),
    ({"uncertainty": {"seed": 1.5}}, "[uncertainty].seed: expected a whole number"),
    ({"uncertainty": {"bootstrap": True}}, "expected a whole number"),
    ({"run": {"cache": 3}}, "[run].cache: expected true or false or text"),
    ({"system": {"engine": "x", "color": 1}}, "unknown key(s) 'color'"),
    ({"title": 5}, "title: expected text"),
])
def test_bad_keys_and_types_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(InputError) as err:
        AuditConfig.from_dict(raw)
    assert message in str(err.value)


@pytest.mark.parametrize(("raw", "message"), [
    ({"dataset": {"path": "x"}}, "needs groups"),
    ({"groups": {"by": ["sex"]}}, "[dataset] path is missing"),
    ({"dataset": {"path": "x"}, "groups": {"by": ["sex"]}, "system": {"engine": "a", "scores": "s"}},
     "one of engine, embeddings or scores"),
    ({"dataset": {"path": "x"}, "groups": {"by": ["sex"]}, "system": {"distance": True}}, "score files only"),
    ({"dataset": {"path": "x", "format": "zip"}, "groups": {"by": ["sex"]}}, "format = 'zip'"),
    ({"dataset": {"path": "x", "format": "pairs"}, "groups": {"by": ["sex"]}}, "pair list"),
    ({"dataset": {"path": "x"}, "groups": {"by": ["sex"]}, "metrics": {"target_fmrs": [0.0]}}, "between 0 and 1"),
    ({"dataset": {"path": "x"}, "groups": {"by": ["sex"]}, "pairs": {"impostor_sample": 2.0}}, "probability"),
])
def test_rules_between_keys(raw: dict, message: str) -> None:
    with pytest.raises(InputError) as err:
        AuditConfig.from_dict(raw).check()
    assert message in str(err.value)


def test_flags_override_the_file() -> None:
    cfg = AuditConfig.from_dict({"dataset": {"path": "x.csv"}, "groups": {"by": ["sex"]},
                                 "uncertainty": {"bootstrap": 10, "seed": 4}})
    over = cfg.override("uncertainty", seed=9).override("groups", by=("race",))
    assert over.uncertainty.seed == 9 and over.uncertainty.bootstrap == 10 and over.groups.by == ("race",)
    assert cfg.override("uncertainty", seed=None) is cfg  # no flag given: unchanged
    with pytest.raises(InputError, match="expected a whole number"):
        cfg.override("uncertainty", seed="nine")


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "a.toml"
    bad.write_text("[groups\nby = 1")
    with pytest.raises(InputError, match="not valid TOML"):
        AuditConfig.from_toml(bad)
    with pytest.raises(InputError, match="no such config file"):
        AuditConfig.from_toml(tmp_path / "none.toml")
