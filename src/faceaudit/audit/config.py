"""The audit configuration: one TOML file holds a whole audit, and the report embeds it.

Sections and keys (all optional except where said; see ``examples/audit.toml``)::

    title = "..."
    [dataset]      path, format (auto|manifest|folder|lfw|pairs), pairs, image_root, attributes, name, labels
    [system]       engine | embeddings | scores (with distance = true for distances), name;
                   engine = ["a", "b"] compares several engines on the same images in one report
    [groups]       by = ["sex", "race"], intersections = [["sex", "race"]], min_subjects
    [metrics]      target_fmrs, alpha
    [pairs]        impostor_sample (probability of keeping each impostor pair; default all pairs)
    [uncertainty]  bootstrap, permutations, seed
    [mitigation]   methods (group_thresholds, fsn, faircal; default none), folds, n_clusters
    [run]          workers, cache (true, false or a file), batch_size, cluster (local:N or a Dask scheduler)

Relative paths are relative to the config file's folder. Unknown sections or keys, and values of
the wrong type, are errors that name the key, so a typo never silently changes an audit. The
effective config (paths made absolute, defaults filled in) is written into every report as
``config.toml``; rerunning it reproduces the report's numbers.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from faceaudit.errors import InputError
from faceaudit.io.files import read_regular
from faceaudit.metrics.rates import DEFAULT_FMRS
from faceaudit.mitigation.methods import METHOD_NAMES

DATASET_FORMATS = ("auto", "manifest", "folder", "lfw", "pairs")
#: Largest config file read (bytes): a whole audit fits in a few hundred bytes.
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class DatasetConfig:
    path: str | None = None
    format: str = "auto"
    pairs: str | None = None  # the pair list of a "pairs" dataset (RFW .txt, BFW .csv, ...)
    image_root: str | None = None  # where the pair list's paths start (default: the dataset's folder)
    attributes: str | None = None  # CSV/Parquet of labels joined on path or subject_id
    name: str | None = None
    labels: str | None = None  # how the demographic labels were obtained, in the user's words


@dataclass(frozen=True)
class SystemConfig:
    engine: str | tuple[str, ...] | None = None  # several: a side-by-side comparison, the first the reference
    embeddings: str | None = None
    scores: str | None = None
    distance: bool = False
    name: str | None = None
    calibration: str | None = None  # a fairness calibration (`faceaudit calibrate --method`): audit its scores

    def engines(self) -> list[str | None]:
        """The engines to run: [None] (the default engine) when none is named."""
        if self.engine is None:
            return [None]
        return [self.engine] if isinstance(self.engine, str) else list(self.engine)


@dataclass(frozen=True)
class GroupsConfig:
    by: tuple[str, ...] = ()
    intersections: tuple[tuple[str, ...], ...] = ()
    #: Groups with fewer subjects are flagged as small in the report's limitations.
    min_subjects: int = 30


@dataclass(frozen=True)
class MetricsConfig:
    target_fmrs: tuple[float, ...] = DEFAULT_FMRS
    alpha: float = 0.5


@dataclass(frozen=True)
class PairsConfig:
    impostor_sample: float | None = None


@dataclass(frozen=True)
class UncertaintyConfig:
    bootstrap: int = 1000
    permutations: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class MitigationConfig:
    """Post-hoc mitigations measured by cross-validation (:mod:`faceaudit.mitigation`); none by default.

    Seeded by ``[uncertainty] seed``, with ``[uncertainty] bootstrap`` replicates for the paired intervals.
    """

    methods: tuple[str, ...] = ()
    folds: int = 5
    n_clusters: int | None = None  # FSN and FairCal clusters; default: chosen from the data


@dataclass(frozen=True)
class RunConfig:
    workers: int | None = None
    cache: bool | str = True
    batch_size: int = 4
    cluster: str | None = None  # local:N or a scheduler address; $FACEAUDIT_CLUSTER when unset


@dataclass(frozen=True)
class AuditConfig:
    title: str = "Demographic audit of a face recognition system"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    mitigation: MitigationConfig = field(default_factory=MitigationConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # --- reading ---
    @classmethod
    def from_toml(cls, path: str | Path) -> AuditConfig:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{p}: no such config file")
        data = read_regular(p, max_bytes=MAX_CONFIG_BYTES, what="an audit config")
        try:
            raw = tomllib.loads(data.decode("utf-8"))
            return cls.from_dict(raw, base_dir=p.resolve().parent, where=str(p))
        except UnicodeDecodeError as exc:
            raise InputError(f"{p}: not UTF-8 text ({exc}); an audit config is a TOML text file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{p}: not valid TOML ({exc})") from exc
        except RecursionError:
            # tomllib parses nested arrays and inline tables recursively; so does printing such a value
            raise InputError(f"{p}: values nested too deeply to read; an audit config nests lists at most two "
                             "levels (see examples/audit.toml)") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base_dir: str | Path = ".", where: str = "config") -> AuditConfig:
        """Validate a parsed config; relative paths are resolved against ``base_dir``."""
        cfg: AuditConfig = _parse(cls, raw, where)
        return cfg.resolve_paths(Path(base_dir))

    def resolve_paths(self, base: Path) -> AuditConfig:
        def fix(v: str | None) -> str | None:
            return None if v is None else str((base / Path(v).expanduser()).resolve())

        d, s = self.dataset, self.system
        cache = self.run.cache
        return dataclasses.replace(
            self,
            dataset=dataclasses.replace(d, path=fix(d.path), pairs=fix(d.pairs), image_root=fix(d.image_root),
                                        attributes=fix(d.attributes)),
            system=dataclasses.replace(s, embeddings=fix(s.embeddings), scores=fix(s.scores),
                                       calibration=fix(s.calibration)),
            run=dataclasses.replace(self.run, cache=(fix(cache) or cache) if isinstance(cache, str) else cache),
        )

    def override(self, section: str, **values: Any) -> AuditConfig:
        """A copy with keys of one section replaced (CLI flags); values of None leave a key as it is."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        current = getattr(self, section)
        merged = _parse(current.__class__, {**_plain(current), **given}, f"[{section}]")
        return dataclasses.replace(self, **{section: merged})

    # --- checks ---
    def groupings(self) -> list[list[str]]:
        """The analyses: each ``by`` attribute alone, then each intersection."""
        out = [[a] for a in self.groups.by] + [list(i) for i in self.groups.intersections]
        if not out:
            raise InputError("the audit needs groups: set [groups] by = [\"sex\", ...] in the config, or --by sex")
        return [list(g) for g in dict.fromkeys(tuple(g) for g in out)]

    def check(self) -> None:
        """Cross-key rules; raises InputError naming what to change."""
        s, d = self.system, self.dataset
        given = [k for k in ("engine", "embeddings", "scores") if getattr(s, k)]
        if s.engine == ():
            raise InputError("[system] engine = [] names no engine; name one, or several to compare them")
        if len(given) > 1:
            raise InputError(f"[system]: give one of engine, embeddings or scores, not {' and '.join(given)}")
        engines = s.engines()
        if len(engines) > 1:
            if len(set(engines)) != len(engines):
                raise InputError(f"[system] engine lists an engine twice: {list(engines)}")
            if d.format == "pairs":
                raise InputError("[system] comparing engines needs all pairs among the people (the paired intervals "
                                 "resample subjects); a pair list gives only its pairs. Use a manifest, folder or "
                                 "LFW layout")
            if self.pairs.impostor_sample is not None:
                raise InputError("[pairs] impostor_sample cannot be used when comparing engines (the paired "
                                 "intervals need all pairs)")
        if s.calibration and s.scores:
            raise InputError("[system] calibration applies to an engine's embeddings (it maps the cosine of two "
                             "images from their clusters); a score file holds only another system's scores")
        if s.calibration and len(engines) > 1:
            raise InputError("[system] calibration belongs to one engine; audit the calibrated engine alone")
        if s.distance and not s.scores:
            raise InputError("[system] distance = true applies to score files only (scores = ...)")
        if not s.embeddings and not d.path:
            raise InputError("[dataset] path is missing: the images to audit (a manifest, a folder, an LFW folder), "
                             "or with [system] scores, the manifest of the ids in the score file")
        if d.format not in DATASET_FORMATS:
            raise InputError(f"[dataset] format = {d.format!r}: use one of {', '.join(DATASET_FORMATS)}")
        if (d.format == "pairs") != (d.pairs is not None):
            raise InputError("[dataset] a pair list (pairs = ...) goes with format = \"pairs\", and back")
        if s.scores and d.format not in ("auto", "manifest"):
            raise InputError("[system] scores = ... needs [dataset] path to be a manifest with id and subject_id")
        if not all(0 < t < 1 for t in self.metrics.target_fmrs) or not self.metrics.target_fmrs:
            raise InputError(f"[metrics] target_fmrs must be rates between 0 and 1, got {self.metrics.target_fmrs}")
        if not 0 <= self.metrics.alpha <= 1:
            raise InputError(f"[metrics] alpha must be between 0 and 1, got {self.metrics.alpha}")
        sample = self.pairs.impostor_sample
        if sample is not None and not 0 < sample <= 1:
            raise InputError(f"[pairs] impostor_sample must be a probability in (0, 1], got {sample}")
        if self.uncertainty.bootstrap < 0 or self.uncertainty.permutations < 0:
            raise InputError("[uncertainty] bootstrap and permutations must be >= 0")
        if self.groups.min_subjects < 1:
            raise InputError("[groups] min_subjects must be >= 1")
        self._check_mitigation()
        self.groupings()

    def _check_mitigation(self) -> None:
        m = self.mitigation
        unknown = [x for x in m.methods if x not in METHOD_NAMES]
        if unknown:
            raise InputError(f"[mitigation] methods: unknown method(s) {', '.join(map(repr, unknown))}; choose from "
                             f"{', '.join(METHOD_NAMES)}")
        if len(set(m.methods)) != len(m.methods):
            raise InputError(f"[mitigation] methods names a method twice: {list(m.methods)}")
        if m.folds < 2:
            raise InputError(f"[mitigation] folds must be at least 2 (calibrate on some people, measure on others), "
                             f"got {m.folds}")
        if m.n_clusters is not None and m.n_clusters < 1:
            raise InputError(f"[mitigation] n_clusters must be at least 1, got {m.n_clusters}")
        if m.methods and self.system.calibration:
            raise InputError("[mitigation] measures mitigations of the raw system, and [system] calibration audits a "
                             "calibrated one: run them as two audits (remove one of the two)")
        if m.methods and len(self.system.engines()) > 1:
            raise InputError("[mitigation] is measured in single-system audits; when comparing engines, audit each "
                             "engine alone with [mitigation] (or remove the [mitigation] methods)")

    # --- writing ---
    def to_dict(self) -> dict[str, Any]:
        """Plain data without None values (TOML has no null): what ``config.toml`` holds."""
        plain: dict[str, Any] = _plain(self)
        return plain

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {k: _plain(v) for k, v in values.items() if v is not None}
    if isinstance(obj, tuple):
        return [_plain(v) for v in obj]
    return obj


def _parse(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, checking keys and value types."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a table of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(names)}")
    values = {}
    for k, v in raw.items():
        key = f"{where}.{k}" if where.startswith("[") else f"[{k}]" if dataclasses.is_dataclass(hints[k]) else k
        values[k] = _value(hints[k], v, key)
    return cls(**values)


_KINDS: dict[Any, str] = {bool: "true or false", str: "text (a file path)", int: "a whole number", float: "a number"}


def _value(typ: Any, v: Any, key: str) -> Any:
    if isinstance(typ, type) and dataclasses.is_dataclass(typ):
        return _parse(typ, v, key)
    origin = typing.get_origin(typ)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(typ)
        if v is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _value(opt, v, key)
            except InputError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise InputError(errors[0])
        kinds = " or ".join(_KINDS.get(o, str(o)) for o in options if o is not type(None))
        raise InputError(f"{key}: expected {kinds}, got {v!r}")
    if origin is tuple:
        inner = typing.get_args(typ)[0]
        if isinstance(v, str) or not isinstance(v, list | tuple):
            raise InputError(f"{key}: expected a list, got {v!r}")
        return tuple(_value(inner, x, f"{key}[{i}]") for i, x in enumerate(v))
    if typ is bool:
        if not isinstance(v, bool):
            raise InputError(f"{key}: expected true or false, got {v!r}")
        return v
    if typ is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{key}: expected a whole number, got {v!r}")
        return v
    if typ is float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InputError(f"{key}: expected a number, got {v!r}")
        return float(v)
    if typ is str:
        if not isinstance(v, str):
            raise InputError(f"{key}: expected text, got {v!r}")
        return v
    raise TypeError(f"unsupported config type {typ!r}")  # a programming error, not a user's
