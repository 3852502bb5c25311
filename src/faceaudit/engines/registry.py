"""Engines by name. ``register_engine`` is how every engine, built-in or not, becomes available."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from faceaudit.engines import default
from faceaudit.engines.base import Engine, EngineIdentity
from faceaudit.errors import FaceauditError


@dataclass(frozen=True)
class EngineSpec:
    """How to describe an engine without loading it, and how to load it."""

    name: str
    description: str
    identity: Callable[[], EngineIdentity]
    load: Callable[[int], Engine]  # argument: threads


_ENGINES: dict[str, EngineSpec] = {}

DEFAULT_ENGINE = default.NAME


def register_engine(spec: EngineSpec) -> None:
    """Make an engine available by ``spec.name`` (replacing one of the same name)."""
    _ENGINES[spec.name] = spec


def engine_spec(name: str | None = None) -> EngineSpec:
    """The registered engine called ``name`` (the default engine when None)."""
    key = name or DEFAULT_ENGINE
    try:
        return _ENGINES[key]
    except KeyError:
        known = ", ".join(sorted(_ENGINES))
        raise FaceauditError(f"unknown engine {key!r}; available engines: {known}") from None


def list_engines() -> list[EngineSpec]:
    return [_ENGINES[k] for k in sorted(_ENGINES)]


def get_engine(name: str | None = None, threads: int = 1) -> Engine:
    """Load the engine called ``name`` (default engine when None)."""
    return engine_spec(name).load(threads)


register_engine(
    EngineSpec(
        name=default.NAME,
        description="YuNet detector + SFace 128-d embedder (OpenCV Zoo; MIT, Apache-2.0), bundled",
        identity=default.identity,
        load=default.load,
    )
)
