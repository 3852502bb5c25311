"""The ``onnx:PATH`` engine family: a float32 copy of SFace given by path embeds as the default engine.

The bundled SFace file, dequantized to float32 by the default engine's own rewrite, is the model
under test: with the sidecar saying it normalises itself (mean 0, std 1) its vectors must equal the
default engine's. Wrappers around the same graph (an NHWC input, a BGR input with per-channel
normalisation, a symbolic input size) must give the same vectors once the sidecar describes them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from faceaudit.cli import main
from faceaudit.engines.base import Engine, EnrolSettings, FaceResult
from faceaudit.engines.cache import config_key
from faceaudit.engines.models import SFACE_2021DEC_INT8BQ
from faceaudit.engines.onnx_model import OnnxModelEngine
from faceaudit.engines.onnx_rewrite import prepare_for_onnxruntime
from faceaudit.engines.registry import engine_spec, get_engine
from faceaudit.errors import InputError, ModelError
from faceaudit.io.images import DEFAULT_MAX_PIXELS, load_image

SELF_NORMALISING = {"mean": 0, "std": 1}


@pytest.fixture(scope="module")
def f32_bytes() -> bytes:
    return prepare_for_onnxruntime(SFACE_2021DEC_INT8BQ.read_verified())


@pytest.fixture(scope="module")
def f32(f32_bytes: bytes) -> onnx.ModelProto:
    return onnx.load_from_string(f32_bytes)


@pytest.fixture(scope="module")
def images(tiny: pd.DataFrame) -> list[np.ndarray]:
    return [load_image(f).rgb for f in tiny["file"][:6]]


@pytest.fixture(scope="module")
def reference(engine: Engine, images: list[np.ndarray]) -> list[FaceResult]:
    """The default engine's results on the test images."""
    return [r[0] for r in engine.enrol_many(images)]


@pytest.fixture(scope="module")
def sface_path(tmp_path_factory: pytest.TempPathFactory, f32_bytes: bytes) -> Path:
    folder = tmp_path_factory.mktemp("sface")
    return write_model(folder / "sface_f32.onnx", f32_bytes, SELF_NORMALISING)


def write_model(path: Path, model: bytes | onnx.ModelProto, sidecar: dict[str, object] | None) -> Path:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    path.write_bytes(data)
    if sidecar is not None:
        Path(f"{path}.json").write_text(json.dumps(sidecar))
    return path


def embeddings(results: list[FaceResult]) -> np.ndarray:
    assert all(r.ok and r.embedding is not None for r in results)
    return np.stack([r.embedding for r in results if r.embedding is not None])


def assert_same_as_default(engine: Engine, images: list[np.ndarray], reference: list[FaceResult],
                           atol: float = 1e-5) -> None:
    got = [r[0] for r in engine.enrol_many(images)]
    for a, b in zip(got, reference, strict=True):
        assert a.face is not None and b.face is not None
        assert a.face.box == b.face.box and a.face.score == b.face.score
    e, ref = embeddings(got), embeddings(reference)
    assert float(np.abs(e - ref).max()) < atol
    assert float(np.min(np.sum(e * ref, axis=1))) > 0.99999


def with_new_input(model: onnx.ModelProto, name: str, dims: list[int | str], nodes: list[onnx.NodeProto],
                   initializers: tuple[np.ndarray, ...] = ()) -> onnx.ModelProto:
    """``model`` with ``nodes`` in front of it, turning a new input ``name`` into its old input 'data'."""
    m = copy.deepcopy(model)
    g = m.graph
    for node in reversed(nodes):
        g.node.insert(0, node)
    for i, value in enumerate(initializers):
        g.initializer.append(numpy_helper.from_array(value, f"pre_{i}"))
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    onnx.checker.check_model(m)
    return m


# --- the float32 SFace copy equals the default engine ---


def test_rewrite_is_harmless_on_a_float32_graph(f32_bytes: bytes) -> None:
    """The onnx engine runs every model through the default engine's rewrite: on a float32 graph it must
    change nothing (here: byte for byte on its own output)."""
    assert prepare_for_onnxruntime(f32_bytes) == f32_bytes


def test_float32_sface_by_path_equals_the_default_engine(sface_path: Path, images: list[np.ndarray],
                                                         reference: list[FaceResult]) -> None:
    spec = engine_spec(f"onnx:{sface_path}")
    assert spec.name == f"onnx:{sface_path}"
    engine = get_engine(spec.name)
    assert engine.embedder.input_size == 112 and engine.identity.embedding_dim == 128
    assert engine.default_min_det_score == 0.6
    assert_same_as_default(engine, images, reference)


def test_the_int8_file_itself_runs_and_equals_the_default_engine(tmp_path: Path, images: list[np.ndarray],
                                                                  reference: list[FaceResult]) -> None:
    path = write_model(tmp_path / "sface_int8.onnx", SFACE_2021DEC_INT8BQ.read_verified(), SELF_NORMALISING)
    assert_same_as_default(get_engine(f"onnx:{path}"), images, reference, atol=1e-6)


def test_wrong_normalisation_changes_the_vectors(tmp_path: Path, f32_bytes: bytes, images: list[np.ndarray],
                                                 reference: list[FaceResult]) -> None:
    """Without the sidecar the ArcFace default (x - 127.5) / 127.5 is applied on top of SFace's own."""
    path = write_model(tmp_path / "sface_nosidecar.onnx", f32_bytes, None)
    ident = engine_spec(f"onnx:{path}").identity()
    assert ident.preprocessing["mean"] == "127.5" and ident.preprocessing["std"] == "127.5"
    e = embeddings([r[0] for r in get_engine(f"onnx:{path}").enrol_many(images)])
    assert float(np.max(np.sum(e * embeddings(reference), axis=1))) < 0.9


def test_nhwc_model(tmp_path: Path, f32: onnx.ModelProto, images: list[np.ndarray],
                    reference: list[FaceResult]) -> None:
    model = with_new_input(f32, "data_nhwc", ["batch", 112, 112, 3],
                           [helper.make_node("Transpose", ["data_nhwc"], ["data"], perm=[0, 3, 1, 2])])
    path = write_model(tmp_path / "sface_nhwc.onnx", model, SELF_NORMALISING)
    spec = engine_spec(f"onnx:{path}")
    assert spec.identity().preprocessing["layout"] == "NHWC"  # read from the shape
    assert_same_as_default(spec.load(1), images, reference)


def test_bgr_model_with_per_channel_normalisation(tmp_path: Path, f32: onnx.ModelProto, images: list[np.ndarray],
                                                  reference: list[FaceResult]) -> None:
    """The model takes BGR normalised per channel: it undoes that, then reverses channels into SFace."""
    mean_bgr, std_bgr = [100.0, 120.0, 140.0], [50.0, 60.0, 70.0]
    model = with_new_input(
        f32, "data_bgr", ["batch", 3, 112, 112],
        [helper.make_node("Mul", ["data_bgr", "pre_0"], ["t_scaled"]),
         helper.make_node("Add", ["t_scaled", "pre_1"], ["t_bgr"]),
         helper.make_node("Gather", ["t_bgr", "pre_2"], ["data"], axis=1)],
        (np.array(std_bgr, np.float32).reshape(1, 3, 1, 1), np.array(mean_bgr, np.float32).reshape(1, 3, 1, 1),
         np.array([2, 1, 0], np.int64)),
    )
    path = write_model(tmp_path / "sface_bgr.onnx", model, {"channels": "BGR", "mean": mean_bgr, "std": std_bgr})
    assert_same_as_default(get_engine(f"onnx:{path}"), images, reference, atol=1e-4)


def test_symbolic_size_needs_input_size_and_output_size_is_found_by_running(
        tmp_path: Path, f32: onnx.ModelProto, images: list[np.ndarray], reference: list[FaceResult]) -> None:
    model = copy.deepcopy(f32)
    for d, sym in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w"), strict=True):
        d.dim_param = sym
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "d"
    path = write_model(tmp_path / "sface_dynamic.onnx", model, SELF_NORMALISING)
    with pytest.raises(ModelError, match=r"not fixed.*sface_dynamic\.onnx\.json.*\"input_size\": 112"):
        engine_spec(f"onnx:{path}")
    Path(f"{path}.json").write_text(json.dumps({**SELF_NORMALISING, "input_size": 112}))
    spec = engine_spec(f"onnx:{path}")
    assert spec.identity().embedding_dim == 128
    assert_same_as_default(spec.load(1), images, reference)


def test_model_metadata_is_read_and_the_sidecar_overrides_it(tmp_path: Path, f32: onnx.ModelProto) -> None:
    model = copy.deepcopy(f32)
    onnx.helper.set_model_props(model, {"faceaudit.mean": "0", "std": "1", "licence": "Apache-2.0",
                                        "producer_note": "ignored"})
    path = write_model(tmp_path / "sface_meta.onnx", model, None)
    spec = engine_spec(f"onnx:{path}")
    ident = spec.identity()
    assert (ident.preprocessing["mean"], ident.preprocessing["std"]) == ("0.0", "1.0")
    assert spec.licence == "Apache-2.0" and ident.models[1]["licence"] == "Apache-2.0"
    path2 = write_model(tmp_path / "sface_meta2.onnx", model, {"mean": [127.5, 127.5, 127.5], "name": "mine"})
    ident2 = engine_spec(f"onnx:{path2}").identity()
    assert ident2.preprocessing["mean"] == "127.5" and ident2.preprocessing["std"] == "1.0"
    assert ident2.name == "mine"


# --- names, identity, cache key ---


def test_relative_name_resolves_to_the_absolute_one(sface_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(sface_path.parent.parent)
    spec = engine_spec(f"onnx:{sface_path.parent.name}/{sface_path.name}")
    assert spec.name == f"onnx:{sface_path.resolve()}"
    assert engine_spec(spec.name).name == spec.name
    ident = spec.identity()
    assert ident.name == "onnx-sface_f32" and str(sface_path.parent) not in json.dumps(ident.to_dict())
    assert ident.models[1]["sha256"] == hashlib.sha256(sface_path.read_bytes()).hexdigest()
    assert ident.models[1]["role"] == "embedder" and ident.models[1]["licence"].startswith("not stated")
    assert ident.preprocessing["input_size"] == "112" and ident.preprocessing["layout"] == "NCHW"
    assert ident.preprocessing["channels"] == "RGB" and ident.preprocessing["mean"] == "0.0"
    assert spec.source == str(sface_path.resolve())


def test_cache_key_changes_when_the_file_changes(tmp_path: Path, f32: onnx.ModelProto) -> None:
    path = write_model(tmp_path / "m.onnx", f32, SELF_NORMALISING)
    spec = engine_spec(f"onnx:{path}")
    settings = EnrolSettings().resolve(spec.min_det_score)
    before = config_key(spec.identity(), settings, DEFAULT_MAX_PIXELS)
    assert config_key(spec.identity(), settings, DEFAULT_MAX_PIXELS) == before
    changed = copy.deepcopy(f32)
    onnx.helper.set_model_props(changed, {"note": "same weights, another file"})
    write_model(path, changed, None)
    assert config_key(spec.identity(), settings, DEFAULT_MAX_PIXELS) != before  # same spec object, new hash


# --- errors say what to do ---


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"does not exist; give the path of an \.onnx file: --engine onnx:"):
        engine_spec(f"onnx:{tmp_path / 'nope.onnx'}")
    with pytest.raises(InputError, match="needs the model's path"):
        OnnxModelEngine.from_path("")


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n")
    with pytest.raises(ModelError, match=r"is not an ONNX model .*saved in ONNX format"):
        engine_spec(f"onnx:{bad}")


def test_sidecar_with_an_unknown_key(tmp_path: Path, f32_bytes: bytes) -> None:
    path = write_model(tmp_path / "m.onnx", f32_bytes, {"mean": 0, "stdev": 1})
    with pytest.raises(InputError, match=r"unknown key 'stdev'; the known keys are .*std.*remove or rename"):
        engine_spec(f"onnx:{path}")
    Path(f"{path}.json").write_text('{"mean": 0, "std": 0}')
    with pytest.raises(InputError, match="'std' must be one non-zero number"):
        OnnxModelEngine.from_path(str(path))
    Path(f"{path}.json").write_text('{"layout": "CHW"}')
    with pytest.raises(InputError, match='"NCHW" or "NHWC"'):
        OnnxModelEngine.from_path(str(path))


def test_input_that_is_not_an_image(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    path = write_model(tmp_path / "vec.onnx", helper.make_model(graph), None)
    with pytest.raises(ModelError, match=r"not an image batch; .*\(N, 3, S, S\) or \(N, S, S, 3\)"):
        engine_spec(f"onnx:{path}")


# --- end to end, with worker processes rebuilding the engine from its name ---


def test_cli_embed_with_workers(tmp_path: Path, sface_path: Path, tiny: pd.DataFrame,
                                reference: list[FaceResult]) -> None:
    manifest = tmp_path / "m.csv"
    tiny.iloc[:6].assign(path=tiny["file"][:6])[["path", "subject_id"]].to_csv(manifest, index=False)
    out = tmp_path / "e.parquet"
    res = CliRunner().invoke(main, ["embed", str(manifest), "--out", str(out), "--engine", f"onnx:{sface_path}",
                                    "--workers", "2", "--batch-size", "2", "--quiet", "--no-cache"])
    assert res.exit_code == 0, res.output
    assert "6 images: 6 embedded, 0 failed" in res.output
    df = pd.read_parquet(out)
    e = np.stack(df["embedding"].to_list()).astype(np.float32)
    assert float(np.abs(e - embeddings(reference)).max()) < 1e-5


def test_graph_with_a_fixed_batch_runs_one_crop_at_a_time(tmp_path: Path, f32: onnx.ModelProto,
                                                          images: list[np.ndarray],
                                                          reference: list[FaceResult]) -> None:
    model = copy.deepcopy(f32)
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.array([1, 128], np.int64), "fixed_shape"))
    g.node.append(helper.make_node("Reshape", [g.output[0].name, "fixed_shape"], ["emb"]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 128]))
    path = write_model(tmp_path / "sface_batch1.onnx", model, SELF_NORMALISING)
    engine = get_engine(f"onnx:{path}")
    assert getattr(engine.embedder, "max_batch", None) == 1
    assert_same_as_default(engine, images, reference)


def test_a_model_replaced_mid_run_is_refused_not_cached_under_the_old_identity(
        tmp_path: Path, f32_bytes: bytes, f32: onnx.ModelProto, tiny: pd.DataFrame) -> None:
    """The caller keys the cache with the identity it saw; a worker that loads a different file must refuse."""
    from faceaudit.engines.batch import embed_files
    from faceaudit.engines.worker import init_worker, work

    path = write_model(tmp_path / "m.onnx", f32_bytes, {"mean": 0, "std": 1})
    spec = engine_spec(f"onnx:{path}")
    before = spec.identity().fingerprint
    init_worker(spec.name, EnrolSettings().resolve(0.6).to_dict(), 10**8, before)
    chunk = [(0, str(tiny["file"][0]), Path(tiny["file"][0]).read_bytes())]
    assert work(chunk)[0][1][0].ok
    changed = copy.deepcopy(f32)
    onnx.helper.set_model_props(changed, {"note": "another file"})
    write_model(path, changed, {"mean": 0, "std": 1})  # another file: another identity
    init_worker(spec.name, EnrolSettings().resolve(0.6).to_dict(), 10**8, before)
    with pytest.raises(ModelError, match="changed after this run started"):
        work(chunk)
    assert embed_files([str(tiny["file"][0])], engine=spec.name, workers=1, progress=False)[0].results[0].ok
