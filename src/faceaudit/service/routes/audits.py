"""Audit jobs over HTTP: submit, list, follow, cancel, download the report.

Every route needs a key whose role the gallery policy lets run ``audit``. Jobs are shared among those keys:
any of them lists every job and downloads any report (reports hold group statistics, no one's data, and an
auditor who sees the queue knows why a job waits); only a job's owner (the key that submitted it) may cancel
it. The work is done by :mod:`faceaudit.service.jobs` (submissions, the table) and the server's
:class:`~faceaudit.service.jobrunner.JobRunner`; a route only translates.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile as StarletteUpload

from faceaudit.audit.config import MAX_CONFIG_BYTES
from faceaudit.gallery.policy import PolicyError
from faceaudit.service import jobs
from faceaudit.service.auth import Principal, authorized
from faceaudit.service.problems import Problem, problem_responses
from faceaudit.service.state import ServiceState, State

router = APIRouter(prefix="/v1/audits", tags=["audits"])

#: The dependency of every route here (one object, so a test can override it).
can_audit = authorized("audit")

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
JOB_ID_PATTERN = jobs.JOB_ID.pattern
#: Problem types of submissions beyond the shared ones: (status, title).
_SUBMIT_PROBLEMS = {
    "invalid-config": (400, "The audit config cannot be used"),
    "outside-data-root": (400, "A path lies outside the server's data root"),
    "no-data-root": (400, "This server takes no audit configs"),
    "invalid-upload": (400, "An uploaded file cannot be used"),
}
MEDIA_TYPES = {"tar.gz": "application/gzip", "zip": "application/zip"}


# --- bodies ---

class ConfigSubmission(BaseModel):
    """An audit config (the TOML of ``faceaudit audit --config``); paths are relative to the data root."""

    model_config = ConfigDict(extra="forbid")

    config: str = Field(min_length=1, max_length=MAX_CONFIG_BYTES,
                        description="TOML text of an audit config (see examples/audit.toml). Paths are relative to "
                                    "the server's data root and must lie under it; [run] is set by the server.")


class ScoreAuditOptions(BaseModel):
    """What an uploaded manifest and score file are audited for (the ``options`` part of the form)."""

    model_config = ConfigDict(extra="forbid")

    by: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(min_length=1, max_length=16)
    intersections: list[list[Annotated[str, Field(min_length=1, max_length=64)]]] = Field(default=[], max_length=16)
    target_fmrs: list[Annotated[float, Field(gt=0, lt=1)]] | None = Field(default=None, min_length=1, max_length=16)
    distance: bool = Field(default=False, description="Scores are distances: lower means more alike.")
    system_name: str | None = Field(default=None, max_length=200)
    title: str | None = Field(default=None, max_length=200)
    labels: str | None = Field(default=None, max_length=2000, description="How the labels were obtained.")
    dataset_name: str | None = Field(default=None, max_length=200)

    def to_audit(self) -> jobs.ScoreAudit:
        return jobs.ScoreAudit(tuple(self.by), tuple(tuple(i) for i in self.intersections),
                               None if self.target_fmrs is None else tuple(self.target_fmrs), self.distance,
                               self.system_name, self.title, self.labels, self.dataset_name)


_SUBMIT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": ConfigSubmission.model_json_schema()},
        # the config file itself, as `curl --data-binary @audit.toml` sends it
        "application/toml": {"schema": {"type": "string", "minLength": 1, "maxLength": MAX_CONFIG_BYTES,
                                        "description": "TOML text of an audit config, as in a config file"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["manifest", "scores", "options"],
                "additionalProperties": False,
                "properties": {
                    "manifest": {"type": "string", "format": "binary",
                                 "description": "CSV or Parquet: id, subject_id and label columns"},
                    "scores": {"type": "string", "format": "binary",
                               "description": "CSV or Parquet: id_a, id_b, score"},
                    "options": ScoreAuditOptions.model_json_schema(),
                },
            },
            "encoding": {"options": {"contentType": "application/json"}},
        },
    },
}


# --- answers ---

class JobProgress(BaseModel):
    phase: str = Field(description="queued, starting, embedding, comparing, reading scores, evaluating, done, "
                                   "failed or cancelled")
    fraction: float | None = Field(ge=0, le=1, description="Of the phase, when it can say (embedding: images done).")
    message: str | None = Field(description="The audit's last message (a warning, the engine being run).")


class AuditJob(BaseModel):
    id: str = Field(pattern=JOB_ID_PATTERN)
    state: JobState
    kind: Literal["config", "scores"]
    title: str
    owner: str = Field(description="The name of the API key that submitted it.")
    created: datetime
    started: datetime | None
    finished: datetime | None
    progress: JobProgress
    error: str | None
    attempts: int = Field(ge=0, description="Attempts started; a job whose server stopped is resumed by another.")
    cancel_requested: bool
    report: str | None = Field(description="Where to download the report, once done.")

    @classmethod
    def of(cls, job: jobs.Job) -> AuditJob:
        return cls(**_fields(job))


class AuditJobDetail(AuditJob):
    config: str = Field(description="The effective audit config (TOML), as the report's config.toml holds it.")

    @classmethod
    def of(cls, job: jobs.Job) -> AuditJobDetail:
        return cls(**_fields(job), config=job.config)


class AuditJobList(BaseModel):
    jobs: list[AuditJob]


def _fields(job: jobs.Job) -> dict[str, Any]:
    p = job.progress
    return {"id": job.id, "state": job.state, "kind": job.kind, "title": job.title, "owner": job.owner,
            "created": job.created, "started": job.started, "finished": job.finished,
            "progress": JobProgress(phase=p.phase, fraction=p.fraction, message=p.message), "error": job.error,
            "attempts": job.attempts, "cancel_requested": job.cancel_requested,
            "report": f"{router.prefix}/{job.id}/report" if job.state == "done" else None}


def _problem(exc: jobs.JobInputError) -> Problem:
    status, title = _SUBMIT_PROBLEMS.get(exc.kind, (400, "The request is not valid"))
    return Problem(status, exc.kind, title, str(exc))


def _validation(exc: ValidationError, where: str) -> Problem:
    errors = [{"loc": [where, *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    shown = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
    return Problem.of("validation", f"the request does not match the API's schema ({shown})", errors=errors)


def _administers(state: ServiceState, who: Principal) -> bool:
    """Whether the key's role may replace the policy: the gallery's administrators."""
    try:
        state.gallery.policy.allow(who.role, "policy")
    except PolicyError:
        return False
    return True


async def _job(state: ServiceState, job_id: str) -> jobs.Job:
    job = await state.run(jobs.get_job, state.store(), job_id)
    if job is None:
        raise Problem.of("not-found", f"no audit job {job_id}")
    return job


JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="The job's id (32 hex digits).")]
Auditor = Annotated[Principal, Depends(can_audit)]


# --- routes ---

@router.post("", status_code=202, response_model=AuditJobDetail, openapi_extra={"requestBody": _SUBMIT_BODY},
             responses=problem_responses(400, 401, 403, 413, 415, 422, 429),
             summary="Submit an audit: a config naming data under the data root, or a manifest and score file")
async def submit(request: Request, response: Response, who: Auditor, state: State) -> AuditJobDetail:
    settings = state.settings
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "application/json":
            try:
                body = ConfigSubmission.model_validate_json(await request.body())
            except ValidationError as exc:
                raise _validation(exc, "body") from None
            job = await state.run(jobs.submit_config, state.store(), settings.jobs_folder, who.name, body.config,
                                  settings.data_root, cluster=settings.cluster)
        elif kind == "application/toml":
            raw = await request.body()
            try:
                text = ConfigSubmission(config=raw.decode("utf-8")).config  # the same length rules as in JSON
            except (UnicodeDecodeError, ValidationError) as exc:
                raise Problem.of("invalid-config", f"the config must be UTF-8 TOML of at most {MAX_CONFIG_BYTES:,} "
                                                   f"bytes ({exc})") from None
            job = await state.run(jobs.submit_config, state.store(), settings.jobs_folder, who.name, text,
                                  settings.data_root, cluster=settings.cluster)
        elif kind == "multipart/form-data":
            manifest, scores, options = await _upload(request)
            job = await state.run(jobs.submit_scores, state.store(), settings.jobs_folder, who.name, manifest, scores,
                                  options.to_audit(), cluster=settings.cluster)
        else:
            raise Problem.of("unsupported-media-type", f"send the audit as application/json (a config), "
                                                       f"application/toml (the config file) or multipart/form-data "
                                                       f"(manifest, scores, options), not "
                                                       f"{kind or 'a body without a content type'}")
    except jobs.JobInputError as exc:
        raise _problem(exc) from None
    response.headers["Location"] = f"{router.prefix}/{job.id}"
    return AuditJobDetail.of(job)


async def _upload(request: Request) -> tuple[bytes, bytes, ScoreAuditOptions]:
    """The form's three parts; anything else in it is refused, like an unknown key of a JSON body."""
    form = await request.form(max_files=8, max_fields=8)  # more parts are refused below, by name
    try:
        unknown = sorted(set(form.keys()) - {"manifest", "scores", "options"})
        if unknown:
            raise Problem.of("validation", f"unknown form part(s) {', '.join(map(repr, unknown))}; the parts are "
                                           "manifest, scores and options",
                             errors=[{"loc": ["body", k], "msg": "extra parts not permitted", "type": "extra_forbidden"}
                                     for k in unknown])
        files: dict[str, bytes] = {}
        for name in ("manifest", "scores"):
            part = form.get(name)
            if not isinstance(part, StarletteUpload):
                raise Problem.of("validation", f"the form needs a file part {name!r}",
                                 errors=[{"loc": ["body", name], "msg": "a file is required", "type": "missing"}])
            files[name] = await part.read()
        raw = form.get("options")
        if raw is None:
            raise Problem.of("validation", "the form needs an options part (JSON: by, and optionally intersections, "
                                           "target_fmrs, distance, system_name, title, labels, dataset_name)",
                             errors=[{"loc": ["body", "options"], "msg": "field required", "type": "missing"}])
        text = (await raw.read()).decode("utf-8", "replace") if isinstance(raw, StarletteUpload) else raw
        try:
            options = ScoreAuditOptions.model_validate(json.loads(text))
        except json.JSONDecodeError as exc:
            raise Problem.of("validation", f"options is not JSON ({exc})",
                             errors=[{"loc": ["body", "options"], "msg": "invalid JSON", "type": "json_invalid"}]
                             ) from None
        except ValidationError as exc:
            raise _validation(exc, "options") from None
        return files["manifest"], files["scores"], options
    finally:
        await form.close()


@router.get("", response_model=AuditJobList, responses=problem_responses(401, 403, 422, 429),
            summary="List audit jobs, newest first")
async def list_audits(who: Auditor, state: State,
                      mine: Annotated[bool, Query(description="Only the jobs this key submitted.")] = False,
                      status: Annotated[JobState | None, Query(alias="state",
                                                               description="Only jobs in this state.")] = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100,
                      offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> AuditJobList:
    found = await state.run(jobs.list_jobs, state.store(), owner=who.name if mine else None, state=status,
                            limit=limit, offset=offset)
    return AuditJobList(jobs=[AuditJob.of(j) for j in found])


@router.get("/{job_id}", response_model=AuditJobDetail, responses=problem_responses(401, 403, 404, 422, 429),
            summary="An audit job's status and progress")
async def get_audit(job_id: JobId, who: Auditor, state: State) -> AuditJobDetail:
    return AuditJobDetail.of(await _job(state, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=AuditJobDetail,
             responses=problem_responses(401, 403, 404, 409, 422, 429),
             summary="Cancel a job: a queued one at once, a running one within a second or two")
async def cancel_audit(job_id: JobId, who: Auditor, state: State) -> AuditJobDetail:
    job = await _job(state, job_id)
    if job.owner != who.name and not _administers(state, who):
        # another auditor's work: reading it is shared, stopping it is not (except for whoever may set the
        # policy, who can stop a job that hogs the server); refused and logged like a policy refusal
        await state.run(state.gallery_for(who.name, who.role).log_refusal, "audit-cancel", "audit.owner",
                        {"job": job_id, "owner": job.owner})
        raise Problem.of("forbidden", f"job {job_id} was submitted by another key; only its owner (or a role the "
                                      "policy lets set the policy) may cancel it", rule="audit.owner")
    try:
        job = await state.run(jobs.request_cancel, state.store(), job_id)
    except jobs.JobStateError as exc:
        raise Problem.of("conflict", str(exc), state=exc.job.state) from None
    return AuditJobDetail.of(job)


@router.get("/{job_id}/report", response_class=FileResponse,
            responses={200: {"description": "The report folder as one archive (MANIFEST.sha256 and, when signed, "
                                            "MANIFEST.sig inside: check it with `faceaudit verify-report`)",
                             "content": {m: {"schema": {"type": "string", "format": "binary"}}
                                         for m in MEDIA_TYPES.values()}},
                       **problem_responses(401, 403, 404, 409, 422, 429)},
            summary="Download a finished job's report folder (tar.gz or zip)")
async def report(job_id: JobId, who: Auditor, state: State,
                 fmt: Annotated[Literal["tar.gz", "zip"], Query(alias="format")] = "tar.gz") -> FileResponse:
    job = await _job(state, job_id)
    try:
        path: Path = await state.run(jobs.report_archive, state.settings.jobs_folder, job, fmt)
    except jobs.JobStateError as exc:
        raise Problem.of("conflict", str(exc), state=exc.job.state) from None
    return FileResponse(path, media_type=MEDIA_TYPES[fmt], filename=f"audit-{job.id}.{fmt}")

