"""The default engine: embeddings equal OpenCV's reference path, identity, model checks, face policy."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from faceaudit.engines import default
from faceaudit.engines.base import Engine, EnrolSettings, FacePolicy
from faceaudit.engines.models import SFACE_2021DEC_INT8BQ, YUNET_2023MAR_INT8BQ
from faceaudit.engines.onnx_rewrite import decompose_prelu, fold_constant_weights, prepare_for_onnxruntime
from faceaudit.errors import ModelError
from faceaudit.io.images import load_image
from imagegen import padded, two_faces


def test_embeddings_match_opencv_on_the_shipped_int8_model(engine: Engine, tiny: pd.DataFrame) -> None:
    """Independent reference: OpenCV's own FaceRecognizerSF on the int8 file, same faces."""
    rec = cv2.FaceRecognizerSF.create(str(SFACE_2021DEC_INT8BQ.path), "")
    for f in tiny["file"][:12]:
        rgb = load_image(f).rgb
        [res] = engine.enrol(rgb)
        assert res.ok and res.face is not None and res.embedding is not None
        assert res.embedding.shape == (128,) and abs(np.linalg.norm(res.embedding) - 1) < 1e-5
        row = np.concatenate([res.face.box, res.face.landmarks.ravel(), [res.face.score]]).astype(np.float32)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        ref = rec.feature(rec.alignCrop(bgr, row)).ravel()
        ref /= np.linalg.norm(ref)
        assert float(ref @ res.embedding) > 0.9999


def test_batched_embedding_equals_one_by_one(engine: Engine, tiny: pd.DataFrame) -> None:
    imgs = [load_image(f).rgb for f in tiny["file"][:6]]
    batch = engine.enrol_many(imgs)
    for img, res in zip(imgs, batch, strict=True):
        single = engine.enrol(img)[0]
        assert res[0].embedding is not None and single.embedding is not None
        np.testing.assert_allclose(res[0].embedding, single.embedding, atol=1e-5)


def test_same_person_scores_higher_than_different_people(engine: Engine, tiny: pd.DataFrame) -> None:
    rows = tiny[tiny["subject_id"].isin(sorted(set(tiny["subject_id"]))[:10])]
    assert len(rows) == 20
    res = engine.enrol_many([load_image(f).rgb for f in rows["file"]])
    emb = np.stack([r[0].embedding for r in res if r[0].embedding is not None])
    subj = rows["subject_id"].to_numpy()
    s = emb @ emb.T
    same = (subj[:, None] == subj[None, :]) & ~np.eye(20, dtype=bool)
    diff = subj[:, None] != subj[None, :]
    assert s[same].min() > s[diff].max()


def test_identity_is_stable_and_describes_the_models() -> None:
    a, b = default.identity(), default.identity()
    assert a == b and a.fingerprint == b.fingerprint
    assert [m["sha256"] for m in a.models] == [YUNET_2023MAR_INT8BQ.sha256, SFACE_2021DEC_INT8BQ.sha256]
    assert a.embedding_dim == 128
    other = replace(a, version="2")
    assert other.fingerprint != a.fingerprint


def test_altered_model_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "m.onnx"
    shutil.copy(SFACE_2021DEC_INT8BQ.path, bad)
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="expected"):
        replace(SFACE_2021DEC_INT8BQ, path_override=str(bad)).read_verified()
    with pytest.raises(ModelError, match="cannot be read"):
        replace(SFACE_2021DEC_INT8BQ, path_override=str(tmp_path / "missing.onnx")).read_verified()


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def test_prelu_rewrite_computes_the_same_function() -> None:
    slope = np.array([-0.7, 0.0, 0.25, 1.3], np.float32).reshape(4, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "a"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 3, 3])],
        [numpy_helper.from_array(slope, "a")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).normal(size=(2, 4, 3, 3)).astype(np.float32)
    expected = np.where(x >= 0, x, slope * x)  # ONNX PRelu definition
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-6)
    rewritten = decompose_prelu(onnx.load_from_string(model.SerializeToString()))
    assert "PRelu" not in {n.op_type for n in rewritten.graph.node}
    np.testing.assert_allclose(_run(rewritten, x), expected, rtol=1e-6, atol=1e-7)


def test_blocked_dequantize_folds_to_the_spec_formula() -> None:
    """DequantizeLinear-21 blocked: y = (q - zp[block]) * scale[block], blocks along `axis`."""
    rng = np.random.default_rng(3)
    q = rng.integers(-128, 127, size=(3, 10), dtype=np.int8)
    scale = rng.uniform(0.01, 0.1, size=(3, 4)).astype(np.float32)  # ceil(10 / 3) blocks on axis 1
    zp = rng.integers(-3, 3, size=(3, 4), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=1, block_size=3),
         helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")],
    )
    folded = fold_constant_weights(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    w = numpy_helper.to_array(next(i for i in folded.graph.initializer if i.name == "w"))
    expected = np.empty((3, 10), np.float32)
    for r in range(3):
        for c in range(10):
            expected[r, c] = (float(q[r, c]) - float(zp[r, c // 3])) * float(scale[r, c // 3])
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert [n.op_type for n in folded.graph.node] == ["MatMul"]


def test_rewritten_sface_has_dynamic_batch_and_no_quantized_ops() -> None:
    model = onnx.load_from_string(prepare_for_onnxruntime(SFACE_2021DEC_INT8BQ.read_verified()))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"DequantizeLinear", "PRelu"}
    assert [i.name for i in model.graph.input] == ["data"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_face_policies_on_a_two_face_image(engine: Engine, tiny: pd.DataFrame) -> None:
    a = Image.open(tiny["file"][0]).convert("RGB")
    b = Image.open(tiny["file"][2]).convert("RGB")
    rgb = np.asarray(two_faces(big=b, small=a))
    faces = engine.detect(rgb)
    assert len(faces) == 2
    central = engine.enrol(rgb, EnrolSettings(policy=FacePolicy.CENTRAL))
    largest = engine.enrol(rgb, EnrolSettings(policy=FacePolicy.LARGEST))
    every = engine.enrol(rgb, EnrolSettings(policy=FacePolicy.ALL))
    assert len(central) == 1 and len(largest) == 1 and len(every) == 2
    assert central[0].n_faces == 2
    assert central[0].face is not None and largest[0].face is not None
    assert central[0].face.area < largest[0].face.area
    # the big face is person b, the central small one person a
    ref_a = engine.enrol(np.asarray(padded(a)))[0].embedding
    ref_b = engine.enrol(np.asarray(padded(b)))[0].embedding
    assert central[0].embedding is not None and largest[0].embedding is not None
    assert central[0].embedding @ ref_a > 0.6 and largest[0].embedding @ ref_b > 0.6


def test_failures_to_enrol_are_results(engine: Engine, tiny: pd.DataFrame) -> None:
    blank = np.full((160, 160, 3), 100, np.uint8)
    [res] = engine.enrol(blank)
    assert not res.ok and res.reason == "no_face" and res.embedding is None
    face = np.asarray(padded(Image.open(tiny["file"][0]).convert("RGB")))
    [hi] = engine.enrol(face, EnrolSettings(min_det_score=0.999))
    assert not hi.ok and hi.reason == "low_score" and hi.face is not None and "0.999" in hi.message
    [small] = engine.enrol(face, EnrolSettings(min_face_px=500))
    assert not small.ok and small.reason == "face_too_small"


def test_large_images_are_detected_on_a_downscaled_copy(engine: Engine, tiny: pd.DataFrame) -> None:
    face = Image.open(tiny["file"][0]).convert("RGB")
    small = np.asarray(padded(face, pad=40))
    big = np.asarray(padded(face, pad=40).resize((small.shape[1] * 8, small.shape[0] * 8), Image.Resampling.BICUBIC))
    [fs] = engine.detect(small)
    [fb] = engine.detect(big)
    np.testing.assert_allclose(np.array(fb.box) / 8, np.array(fs.box), atol=3)
    e1, e2 = engine.enrol(small)[0].embedding, engine.enrol(big)[0].embedding
    assert e1 is not None and e2 is not None and float(e1 @ e2) > 0.9
