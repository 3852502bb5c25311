"""The ``onnx`` engine family: ``--engine onnx:PATH`` embeds faces with any ArcFace-style ONNX model.

Detection and alignment are the default engine's: YuNet finds each face and its five landmarks, which
are warped onto the ArcFace template scaled to the model's input size S (112 for nearly every ArcFace
model). The model embeds the aligned crop, run by onnxruntime; the output is L2-normalised and compared
by cosine similarity, as for every engine. The engine's name is ``onnx:`` + the model's absolute path
(worker processes rebuild the engine from it); its identity, recorded with every vector, is named
after the file (``onnx-<file stem>``) and holds the file's SHA-256, computed whenever the identity is
built, so cached vectors of a changed file are never reused.

How a crop becomes the model's input is taken, in this order, from:

1. a sidecar file next to the model, ``PATH.json`` (``arcface.onnx`` -> ``arcface.onnx.json``);
2. the model's own ``metadata_props`` under the same keys (bare or prefixed ``faceaudit.``), values
   written as JSON (``"127.5"``, ``"[0.5, 0.5, 0.5]"``) or plain text (``NHWC``);
3. the model's input shape: NCHW when its second dimension is 3, NHWC when its last is; S from the
   spatial dimensions;
4. defaults: RGB, mean 127.5, std 127.5 -- the InsightFace ArcFace convention, (x - 127.5) / 127.5.

Sidecar keys, all optional (any other key is an error)::

    input_size  side S of the square crop; required when the model leaves its spatial size symbolic
    layout      "NCHW" or "NHWC"
    channels    "RGB" or "BGR": the channel order the model takes
    mean, std   one number, or three in the model's channel order: the model is fed (x - mean) / std,
                with x the 0-255 pixel values
    name        the name recorded in results (default "onnx-<file stem>")
    licence     the model's licence (default: not stated); "license" is accepted too
    source      where the model came from (default: the file's path)

A model that normalises inside its own graph, like SFace from the OpenCV Zoo (it subtracts 127.5 and
divides by 128 itself), needs ``{"mean": 0, "std": 1}`` in its sidecar. Nothing in the file says so,
and with the default it would be normalised twice and give useless vectors without any error. Check a
new model on a few known pairs (``faceaudit verify``) before trusting its results.

The model must take one float32 image tensor (N, 3, S, S) or (N, S, S, 3) and give the embedding as
its first output. It goes through the same in-memory rewrite as the default engine
(:func:`faceaudit.engines.onnx_rewrite.prepare_for_onnxruntime`: constant folding, PRelu as Relu, a
symbolic batch dimension), which computes the same function; models with control flow (If, Loop) are
run as they are. A model whose graph cannot take a batch of crops is run one crop at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceaudit.engines import default
from faceaudit.engines.base import ArcFaceAligner, Engine, EngineIdentity
from faceaudit.engines.models import YUNET_2023MAR_INT8BQ, ModelFile, installed_version
from faceaudit.errors import InputError, ModelError

PREFIX = "onnx"
#: Bumped whenever anything here changes the vectors (so caches never serve stale ones).
VERSION = "1"
SIDECAR_KEYS = ("input_size", "layout", "channels", "mean", "std", "name", "licence", "source")
_ALIASES = {"license": "licence"}
DEFAULT_CHANNELS = "RGB"
DEFAULT_MEAN = 127.5
DEFAULT_STD = 127.5
LICENCE_NOT_STATED = "not stated (see the model's own terms)"
SOURCE_NOT_STATED = "not stated"
SELF_NORMALISING = ('a model that normalises inside its own graph (such as SFace) needs {"mean": 0, "std": 1} '
                    "in the sidecar")
_USAGE = "--engine onnx:/path/to/model.onnx"
_FLOAT = 1  # onnx.TensorProto.FLOAT

Norm = float | tuple[float, ...]


@dataclass(frozen=True)
class Preprocessing:
    """How an aligned S x S uint8 RGB crop is turned into the model's input."""

    input_size: int
    layout: str  # NCHW or NHWC
    channels: str  # RGB or BGR
    mean: Norm  # one value, or three in the model's channel order
    std: Norm

    def describe(self) -> dict[str, str]:
        return {
            "input_size": str(self.input_size),
            "layout": self.layout,
            "channels": self.channels,
            "mean": json.dumps(self.mean if isinstance(self.mean, float) else list(self.mean)),
            "std": json.dumps(self.std if isinstance(self.std, float) else list(self.std)),
        }


@dataclass(frozen=True)
class OnnxModelEngine:
    """An ONNX embedding model behind YuNet and ArcFace alignment; build it with :meth:`from_path`."""

    name: str  # onnx:<absolute path>
    path: Path
    embedding_dim: int
    licence: str
    source: str  # as stated, else the file's path (for people; the identity never holds a path)
    display_name: str  # the identity's name
    stated_source: str  # "" when neither the sidecar nor the model says
    preprocessing: Preprocessing
    rewrite: bool  # False for graphs with control flow, which the rewrite does not handle

    @classmethod
    def from_path(cls, path: str) -> OnnxModelEngine:
        """Check the model file (and its sidecar) and describe the engine, without running the model
        unless its output size is symbolic."""
        if not path.strip():
            raise InputError(f"the onnx engine needs the model's path: {_USAGE}")
        p = Path(path).expanduser().resolve()
        if not p.is_file():
            what = "is a folder, not a file" if p.is_dir() else "does not exist"
            raise InputError(f"ONNX model {p} {what}; give the path of an .onnx file: {_USAGE}")
        model = _load_onnx(p)
        sidecar = p.with_name(p.name + ".json")
        stated = {**_metadata_settings(model, p), **_sidecar_settings(sidecar)}
        prep = _preprocessing(model, p, stated, sidecar)
        rewrite = not _has_subgraphs(model.graph)
        dim = _static_output_dim(model)
        del model
        if dim is None:
            embedder = _make_embedder(p, p.read_bytes(), prep, rewrite, threads=1)
            dim = _check_runs(embedder, p, prep)
        licence = str(stated.get("licence") or LICENCE_NOT_STATED)
        stated_source = str(stated.get("source") or "")
        return cls(
            name=f"{PREFIX}:{p}",
            path=p,
            embedding_dim=dim,
            licence=licence,
            source=stated_source or str(p),
            display_name=str(stated.get("name") or f"onnx-{p.stem}"),
            stated_source=stated_source,
            preprocessing=prep,
            rewrite=rewrite,
        )

    def model_file(self, sha256: str) -> ModelFile:
        return ModelFile(filename=self.path.name, sha256=sha256, role="embedder",
                         source=self.stated_source or SOURCE_NOT_STATED, licence=self.licence,
                         path_override=str(self.path))

    def identity(self) -> EngineIdentity:
        """The engine's identity; hashes the model file now, so a changed file gives a new identity."""
        base = default.identity()
        prep = self.preprocessing
        runtime = "onnxruntime, rewritten in memory (prepare_for_onnxruntime)" if self.rewrite else \
            "onnxruntime, file as given"
        return EngineIdentity(
            name=self.display_name,
            version=VERSION,
            embedding_dim=self.embedding_dim,
            models=(
                {**YUNET_2023MAR_INT8BQ.to_dict(), "runtime": "opencv FaceDetectorYN, file as shipped"},
                {**self.model_file(_sha256_file(self.path)).to_dict(), "runtime": runtime},
            ),
            preprocessing={
                "decode": base.preprocessing["decode"],
                "detect": base.preprocessing["detect"],
                "align": f"Umeyama similarity on 5 landmarks to the ArcFace template scaled to "
                         f"{prep.input_size}x{prep.input_size}, bilinear",
                "embed": f"{prep.channels} float32 0-255 {prep.layout}, fed as (x - mean) / std, L2-normalised",
                **prep.describe(),
            },
            runtime={**base.runtime, "onnx": installed_version("onnx")},
        )

    def load(self, threads: int = 1) -> Engine:
        """Load the engine; ``threads`` is onnxruntime's and OpenCV's thread count."""
        import cv2  # heavy imports only where a model is loaded

        from faceaudit.engines.yunet import YuNetDetector

        ident = self.identity()
        try:
            data = self.model_file(ident.models[1]["sha256"]).read_verified()
        except ModelError:
            raise ModelError(f"ONNX model {self.path} changed or vanished while it was being loaded; "
                             "run again once the file is in place") from None
        cv2.setNumThreads(threads)
        embedder = _make_embedder(self.path, data, self.preprocessing, self.rewrite, threads)
        dim = _check_runs(embedder, self.path, self.preprocessing)
        if dim != self.embedding_dim:
            raise ModelError(f"ONNX model {self.path} gives {dim}-d vectors but its graph declares "
                             f"{self.embedding_dim}; re-export the model with a correct output shape")
        return Engine(identity=ident, detector=YuNetDetector(YUNET_2023MAR_INT8BQ),
                      aligner=ArcFaceAligner(self.preprocessing.input_size), embedder=embedder,
                      default_min_det_score=default.MIN_DET_SCORE)


# --- reading the model ---


def _load_onnx(p: Path) -> Any:
    import onnx

    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"{p} is not an ONNX model ({exc}); the onnx engine needs a model saved in ONNX "
                         "format (from PyTorch: torch.onnx.export)") from None
    graph = model.graph
    if not graph.node or not graph.input or not graph.output:
        raise ModelError(f"{p} is not an ONNX model (it holds no graph); the onnx engine needs a model saved "
                         "in ONNX format (from PyTorch: torch.onnx.export)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise ModelError(f"{p} keeps its weights in separate external-data files, which faceaudit does not "
                         "read; save it as one file: python -c \"import onnx; onnx.save(onnx.load('IN.onnx'), "
                         "'OUT.onnx')\"")
    return model


def _has_subgraphs(graph: Any) -> bool:
    return any(a.type in (5, 10) for n in graph.node for a in n.attribute)  # AttributeProto GRAPH, GRAPHS


def _dims(value: Any) -> list[int | str]:
    """A value's shape: ints where fixed, the symbol (or '?') where not."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim]


def _image_input(model: Any, p: Path) -> tuple[str, list[int | str]]:
    """Name and shape of the model's one real input (not a weight), checked to be a float32 4-d tensor."""
    graph = model.graph
    weights = {i.name for i in graph.initializer}
    used = {x for n in graph.node for x in n.input}
    inputs = [v for v in graph.input if v.name not in weights and v.name in used]
    wanted = "one float32 image tensor of shape (N, 3, S, S) or (N, S, S, 3)"
    if len(inputs) != 1:
        names = ", ".join(repr(v.name) for v in inputs) or "none"
        raise ModelError(f"{p} takes {len(inputs)} inputs ({names}) but the onnx engine needs a face embedding "
                         f"model with {wanted}; export the model with the image as its only input")
    v = inputs[0]
    if not v.type.HasField("tensor_type"):
        raise ModelError(f"input {v.name!r} of {p} is not a tensor; the onnx engine needs {wanted}")
    elem = v.type.tensor_type.elem_type
    if elem != _FLOAT:
        import onnx

        kind = onnx.TensorProto.DataType.Name(elem)
        raise ModelError(f"input {v.name!r} of {p} is {kind}, but faceaudit feeds float32 pixels; export the "
                         "model with a float32 input")
    dims = _dims(v)
    if len(dims) != 4:
        raise ModelError(f"input {v.name!r} of {p} has shape {dims or 'unknown'}, not an image batch; the onnx "
                         f"engine needs a face embedding model with {wanted}")
    return v.name, dims


def _static_output_dim(model: Any) -> int | None:
    """Size of the first output without its batch dimension, when the graph fixes it."""
    dims = _dims(model.graph.output[0])
    if len(dims) < 2 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        return None
    return math.prod(int(d) for d in dims[1:])


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as exc:
        raise ModelError(f"ONNX model {p} cannot be read ({exc.strerror}); check that the file is still there "
                         f"and readable: {_USAGE}") from None
    return h.hexdigest()


# --- what the model is fed ---


def _sidecar_settings(sidecar: Path) -> dict[str, Any]:
    if not sidecar.is_file():
        return {}
    try:
        raw = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"sidecar {sidecar} is not readable JSON ({exc}); fix it or remove it") from None
    if not isinstance(raw, dict):
        raise InputError(f"sidecar {sidecar} must hold a JSON object such as {{\"mean\": 127.5, \"std\": 127.5}}")
    out = {}
    for key, value in raw.items():
        name = _ALIASES.get(key, key)
        if name not in SIDECAR_KEYS:
            raise InputError(f"sidecar {sidecar}: unknown key {key!r}; the known keys are "
                             f"{', '.join(SIDECAR_KEYS)} (remove or rename it)")
        out[name] = _checked(name, value, f"sidecar {sidecar}")
    return out


def _metadata_settings(model: Any, p: Path) -> dict[str, Any]:
    bare: dict[str, Any] = {}
    prefixed: dict[str, Any] = {}
    for prop in model.metadata_props:
        key = prop.key
        target = bare
        if key.startswith("faceaudit."):
            key, target = key[len("faceaudit."):], prefixed
        key = _ALIASES.get(key, key)
        if key not in SIDECAR_KEYS:
            continue  # other tools' metadata
        try:
            value = json.loads(prop.value)
        except json.JSONDecodeError:
            value = prop.value
        if key in ("name", "licence", "source"):
            value = prop.value
        target[key] = _checked(key, value, f"the metadata of model {p} (key {prop.key!r}; a sidecar "
                                           f"{p.name}.json overrides it)")
    return {**bare, **prefixed}


def _checked(key: str, value: Any, where: str) -> Any:
    """The value of a setting, checked and normalised; InputError naming ``where`` otherwise."""
    def bad(expected: str) -> InputError:
        return InputError(f"{where}: {key!r} must be {expected}, got {json.dumps(value)}")

    if key == "input_size":
        if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 1024:
            raise bad("a whole number of pixels between 16 and 1024, such as 112")
        return int(value)
    if key in ("layout", "channels"):
        allowed = ("NCHW", "NHWC") if key == "layout" else ("RGB", "BGR")
        if not isinstance(value, str) or value.upper() not in allowed:
            raise bad(" or ".join(f'"{a}"' for a in allowed))
        return value.upper()
    if key in ("mean", "std"):
        values = value if isinstance(value, list) else [value]
        ok = len(values) in (1, 3) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if not ok or (key == "std" and any(v == 0 for v in values)):
            nonzero = " non-zero" if key == "std" else ""
            raise bad(f"one{nonzero} number or a list of three (one per channel, in the model's channel order)")
        floats = tuple(float(v) for v in values)
        return floats[0] if len(set(floats)) == 1 else floats
    if not isinstance(value, str) or not value.strip():
        raise bad("a non-empty string")
    return value.strip()


def _preprocessing(model: Any, p: Path, stated: Mapping[str, Any], sidecar: Path) -> Preprocessing:
    name, dims = _image_input(model, p)
    layout = stated.get("layout")
    if layout is None:
        if dims[1] == 3:
            layout = "NCHW"
        elif dims[3] == 3:
            layout = "NHWC"
        else:
            raise ModelError(f"input {name!r} of {p} has shape {dims}: it does not say where the 3 colour "
                             f"channels are; say it in the sidecar {sidecar}, e.g. {{\"layout\": \"NCHW\"}} or "
                             f"{{\"layout\": \"NHWC\"}}")
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    if isinstance(c, int) and c != 3:
        raise ModelError(f"input {name!r} of {p} has shape {dims}, which has no 3 colour channels where layout "
                         f"{layout} puts them; the onnx engine needs an image tensor (N, 3, S, S) or (N, S, S, 3)")
    fixed = [d for d in (h, w) if isinstance(d, int)]
    size = stated.get("input_size")
    if size is None:
        if len(fixed) != 2:
            raise ModelError(f"input {name!r} of {p} has shape {dims}: its image size is not fixed; say the size "
                             f"the model was trained on in the sidecar {sidecar}, e.g. {{\"input_size\": 112}}")
        if fixed[0] != fixed[1]:
            raise ModelError(f"input {name!r} of {p} takes {w}x{h} images, but faceaudit aligns faces to square "
                             "crops; the onnx engine needs a model with a square input (N, 3, S, S) or (N, S, S, 3)")
        size = int(fixed[0])
    elif any(d != size for d in fixed):
        raise InputError(f"input_size {size} does not match input {name!r} of {p}, whose shape is {dims}; fix "
                         f"or remove input_size in {sidecar}")
    return Preprocessing(
        input_size=int(size),
        layout=str(layout),
        channels=str(stated.get("channels", DEFAULT_CHANNELS)),
        mean=stated.get("mean", DEFAULT_MEAN),
        std=stated.get("std", DEFAULT_STD),
    )


# --- running it ---


def _make_embedder(p: Path, data: bytes, prep: Preprocessing, rewrite: bool, threads: int) -> Any:
    from faceaudit.engines.onnx_embedder import OnnxEmbedder
    from faceaudit.engines.onnx_rewrite import prepare_for_onnxruntime

    graph = data
    if rewrite:
        try:
            graph = prepare_for_onnxruntime(data)
        except Exception:  # the rewrite is only for speed: run the graph as given
            graph = data
    try:
        return OnnxEmbedder(graph, threads=threads, mean=prep.mean, std=prep.std, rewrite=False,
                            layout=prep.layout, channels=prep.channels, input_size=prep.input_size)
    except ModelError as exc:
        raise ModelError(f"ONNX model {p}: {exc}") from None


def _check_runs(embedder: Any, p: Path, prep: Preprocessing) -> int:
    """Run the model on two crops, one at a time and together: returns the embedding size, and limits
    the embedder to one crop per call when the graph cannot take a batch (a fixed batch of 1 inside)."""
    s = prep.input_size
    crops = np.random.default_rng(0).integers(0, 256, (2, s, s, 3), dtype=np.uint8)
    try:
        one = np.concatenate([embedder.embed(crops[:1]), embedder.embed(crops[1:])])
    except Exception as exc:  # onnxruntime raises its own types
        raise ModelError(f"onnxruntime cannot run ONNX model {p} on a {s}x{s} {prep.layout} crop ({exc}); check "
                         f"input_size and layout in the sidecar {p.name}.json") from None
    if one.shape[1] == 0 or not np.all(np.isfinite(one)):
        raise ModelError(f"ONNX model {p} gives empty or non-finite outputs; it is not usable as an embedder")
    try:
        both = embedder.embed(crops)
        batched = both.shape == one.shape and float(np.abs(both - one).max()) <= 1e-3 * float(np.abs(one).max())
    except Exception:  # a fixed batch size somewhere inside the graph
        batched = False
    if not batched:
        embedder.max_batch = 1
    return int(one.shape[1])
