"""The request and response bodies of the API, as pydantic models: they make the OpenAPI document precise, and
every JSON request body forbids fields it does not define (``extra="forbid"``: a misspelt field is an error,
never silently ignored).

Each response model is built from what the Python API returns (``from_*`` class methods); the routes add
nothing of their own.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from faceaudit.engines.base import Face, FaceResult
from faceaudit.gallery.gallery import MAX_SUBJECT_ID, Erasure, GalleryCheck, KeyRotation, SearchResult
from faceaudit.gallery.policy import OPERATIONS, Policy

Operation = Literal["enrol", "verify", "search", "delete", "export", "rotate-key", "policy", "detect", "embed",
                    "audit", "log"]
assert set(Operation.__args__) == set(OPERATIONS), "the API's operations are the policy's"  # type: ignore[attr-defined]

SubjectId = Annotated[str, Field(min_length=1, max_length=MAX_SUBJECT_ID, description=(
    "Any text: quotes, angle brackets and semicolons are data (stored through parameterised SQL, escaped wherever "
    "shown); no NUL character."))]
Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256, 64 lowercase hex digits")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- recognition ---
class FaceModel(_Strict):
    box: list[float] = Field(description="x, y, width, height in pixels of the upright image")
    landmarks: list[list[float]] = Field(description="5 (x, y) points in the detector's scheme")
    score: float = Field(description="the detector's confidence")

    @classmethod
    def of(cls, face: Face) -> FaceModel:
        return cls(**face.to_dict())


class DetectResponse(_Strict):
    engine: str
    faces: list[FaceModel]


class EmbeddedImage(_Strict):
    index: int = Field(description="position of the image in the request, from 0")
    filename: str | None
    ok: bool
    reason: str = Field(description="empty when ok; else why no face could be enrolled (no_face, low_score, ...)")
    message: str
    n_faces: int
    face: FaceModel | None
    embedding: list[float] | None = Field(description="L2-normalised; null when not ok")

    @classmethod
    def of(cls, index: int, filename: str | None, r: FaceResult) -> EmbeddedImage:
        return cls(index=index, filename=filename, ok=r.ok, reason=r.reason, message=r.message, n_faces=r.n_faces,
                   face=None if r.face is None else FaceModel.of(r.face),
                   embedding=None if r.embedding is None else [float(v) for v in r.embedding])


class EmbedResponse(_Strict):
    engine: str
    results: list[EmbeddedImage]


class CalibrationIdentityModel(_Strict):
    """The fairness calibration a decision used (``faceaudit serve --calibration``): score and threshold are then
    calibrated, never raw."""

    method: str = Field(description="faircal or fsn")
    sha256: str = Field(description="SHA-256 of the calibration artefact's canonical content")
    engine: str
    dataset: str = Field(description="the dataset it was fitted on")
    dataset_sha256: str = Field(description="SHA-256 of the embeddings file it was fitted on")


class VerifyResponse(_Strict):
    mode: Literal["pair", "subject"] = Field(description="two images, or an image against an enrolled subject")
    match: bool | None = Field(description="null when a face could not be enrolled (see failures)")
    score: float | None
    threshold: float
    target_fmr: float
    subject_id: str | None = None
    engine: str
    failures: list[str] = Field(default_factory=list)
    calibration: CalibrationIdentityModel | None = Field(
        default=None, description="the fairness calibration of score and threshold; null: raw cosine scores")


# --- gallery ---
class EnrolResponse(_Strict):
    subject_id: str
    template_ids: list[int]


class ConsentModel(_Strict):
    given_by: str
    given_at: str
    legal_basis: str
    expires: str | None = None


class ExportedTemplate(_Strict):
    template_id: int
    created: str
    source: str | None
    embedding_float32_base64: str


class LogEntryModel(_Strict):
    seq: int
    time: str
    actor: str
    role: str
    operation: str
    purpose: str | None
    legal_basis: str | None
    params: dict[str, Any]
    result: dict[str, Any]
    prev_hash: str
    hash: str


class ExportResponse(_Strict):
    subject_id: str
    consent: ConsentModel
    created: str
    expires: str | None
    templates: list[ExportedTemplate]
    log_entries: list[LogEntryModel]


class ErasureResponse(_Strict):
    subject_id: str
    template_ids: list[int]
    complete: bool = Field(description="nothing of the person is left in the store, the index or the database files")
    problems: list[str] = Field(description="what the erasure check found left (empty when complete)")

    @classmethod
    def of(cls, e: Erasure) -> ErasureResponse:
        return cls(subject_id=e.subject_id, template_ids=e.template_ids, complete=e.complete, problems=e.problems)


class CandidateModel(_Strict):
    rank: int
    subject_id: str
    template_id: int
    score: float
    match: bool


class SearchResponse(_Strict):
    candidates: list[CandidateModel]
    threshold: float
    target_fpir: float
    gallery_size: int
    investigative_lead: bool
    log_seq: int
    note: str | None
    calibration: CalibrationIdentityModel | None = Field(
        default=None, description="the fairness calibration of scores and threshold; null: raw cosine scores")

    @classmethod
    def of(cls, r: SearchResult) -> SearchResponse:
        return cls(**r.to_dict())


class LogHead(_Strict):
    seq: int = Field(ge=0)
    hash: Hash


class LogVerifyRequest(_Strict):
    head: LogHead | None = Field(default=None, description="a published head the log must still hold at its seq")


class LogCheckResponse(_Strict):
    ok: bool
    entries: int
    problems: list[str] = Field(description="what the hash chain check found")
    seal_problems: list[str] = Field(description="what the check of the seal over the policy and head found")
    head: LogHead | None = Field(description="the head stored beside the log (null: missing)")

    @classmethod
    def of(cls, c: GalleryCheck) -> LogCheckResponse:
        head = None if c.head is None else LogHead(seq=c.head[0], hash=c.head[1])
        return cls(ok=c.ok, entries=c.chain.entries, problems=c.chain.problems, seal_problems=c.seal_problems,
                   head=head)


class SearchRulesModel(_Strict):
    enabled: bool = False
    purpose: str | None = None
    legal_basis: str | None = None
    max_k: int = Field(default=10, ge=1)
    max_fpir: float = Field(default=0.01, gt=0, lt=1)
    min_score: float | None = None
    human_review: bool = True


class LimitsModel(_Strict):
    window_minutes: int = Field(default=60, ge=1)
    max_verifies: int = Field(default=1000, ge=1)
    max_exports: int = Field(default=10, ge=1)


class RetentionModel(_Strict):
    days: int = Field(ge=1)


class PolicyDocument(_Strict):
    """A gallery policy (the TOML file's sections, as JSON): ``examples/gallery-policy.toml`` explains each."""

    roles: dict[str, list[Operation]]
    search: SearchRulesModel = SearchRulesModel()
    limits: LimitsModel = LimitsModel()
    retention: RetentionModel | None = None

    @classmethod
    def of(cls, p: Policy) -> PolicyDocument:
        return cls.model_validate(p.to_dict())

    def policy(self) -> Policy:
        """The policy this document states (InputError, a 400, for what only the policy's own rules refuse)."""
        return Policy.from_dict(self.model_dump(exclude_none=True))


class KeyRotationResponse(_Strict):
    templates: int = Field(description="templates re-encrypted under the new key")
    old_key_id: str
    key_id: str
    key_file: str = Field(description="the server's key file, which now holds the new key")
    retired_key_file: str = Field(description="the old key, kept for backups made before the rotation")

    @classmethod
    def of(cls, r: KeyRotation) -> KeyRotationResponse:
        return cls(templates=r.templates, old_key_id=r.old_key_id, key_id=r.key_id, key_file=str(r.key_file),
                   retired_key_file=str(r.retired_key_file))


# --- operations ---
class Health(_Strict):
    status: Literal["ok"]


class Readiness(_Strict):
    status: Literal["ready"]
    engine: bool
    database: bool


class Version(_Strict):
    faceaudit: str
    api: Literal["v1"]
    engine: dict[str, Any] = Field(description="the identity of the engine every image is processed with")
