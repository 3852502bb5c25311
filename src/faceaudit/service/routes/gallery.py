"""The gallery over HTTP: enrol with consent, export (subject access), erase with its check, 1:N search as the
policy allows, the log's head and its verification, the policy, key rotation. Every call acts as the request's
API key (:meth:`Gallery.acting_as`): its name is the actor in the gallery's log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, File, Form, Path, Query, UploadFile, status

from faceaudit.gallery.gallery import MAX_SUBJECT_ID, Consent
from faceaudit.service.auth import Principal, authenticated, authorized
from faceaudit.service.limits import JSON, MULTIPART, read_images
from faceaudit.service.models import (
    EnrolResponse,
    ErasureResponse,
    ExportResponse,
    KeyRotationResponse,
    LogCheckResponse,
    LogHead,
    LogVerifyRequest,
    PolicyDocument,
    SearchResponse,
    SubjectId,
)
from faceaudit.service.problems import REQUEST_ERRORS, Problem, problem_responses
from faceaudit.service.state import State

router = APIRouter(prefix="/v1", tags=["gallery"])
# the subject id is the rest of the path: an id holding "/" (sent as %2F) still names one subject
PathSubject = Annotated[str, Path(min_length=1,
                                  max_length=MAX_SUBJECT_ID, description="the subject's id, URL-encoded")]
BySubject = Annotated[bool, Query(description="the subject asked for this themselves (their right: always "
                                              "allowed, and logged); otherwise the key's role needs the operation")]


@router.post("/subjects", response_model=EnrolResponse, status_code=status.HTTP_201_CREATED, dependencies=MULTIPART,
             responses=problem_responses(*REQUEST_ERRORS),
             summary="Enrol a person from images, with their consent record")
async def enrol(state: State, who: Annotated[Principal, Depends(authorized("enrol"))],
                subject_id: Annotated[SubjectId, Form()],
                consent_by: Annotated[str, Form(min_length=1, max_length=1000, description="who gave consent")],
                consent_date: Annotated[str, Form(description="when consent was given, YYYY-MM-DD")],
                legal_basis: Annotated[str, Form(min_length=1, max_length=1000)],
                images: Annotated[list[UploadFile], File(description="one face each")],
                expires: Annotated[str | None, Form(description="end of consent, YYYY-MM-DD (default: the "
                                                                "policy's retention)")] = None) -> EnrolResponse:
    data = await read_images(images, state.settings.max_images_per_request)
    consent = Consent(consent_by, consent_date, legal_basis, expires)
    gallery = state.gallery_for(who.name, who.role)
    ids = await state.run(gallery.enrol, subject_id, consent, images=data)
    return EnrolResponse(subject_id=subject_id, template_ids=ids)


@router.get("/subjects/{subject_id:path}/export", response_model=ExportResponse,
            responses=problem_responses(404, *REQUEST_ERRORS),
            summary="Everything held about a person (subject access request), templates in plaintext")
async def export(state: State, who: Annotated[Principal, Depends(authorized("export"))], subject_id: PathSubject,
                 requested_by_subject: BySubject = False) -> ExportResponse:
    gallery = state.gallery_for(who.name, who.role)
    doc = await state.run(gallery.export, subject_id, requested_by_subject=requested_by_subject)
    return ExportResponse.model_validate(doc)


@router.delete("/subjects/{subject_id:path}", response_model=ErasureResponse,
               responses=problem_responses(404, *REQUEST_ERRORS),
               summary="Erase a person, and check at once that nothing of them is left")
async def delete(state: State, who: Annotated[Principal, Depends(authorized("delete"))], subject_id: PathSubject,
                 requested_by_subject: BySubject = False) -> ErasureResponse:
    gallery = state.gallery_for(who.name, who.role)
    return ErasureResponse.of(await state.run(gallery.erase, subject_id, requested_by_subject=requested_by_subject))


@router.post("/search", response_model=SearchResponse, dependencies=MULTIPART,
             responses=problem_responses(*REQUEST_ERRORS),
             summary="1:N search, only as the policy allows, for its declared purpose and legal basis")
async def search(state: State, who: Annotated[Principal, Depends(authorized("search"))],
                 image: Annotated[UploadFile, File(description="the probe")],
                 purpose: Annotated[str, Form(min_length=1, max_length=1000, description="the policy's purpose")],
                 legal_basis: Annotated[str, Form(min_length=1, max_length=1000)],
                 k: Annotated[int, Form(ge=1, le=1000, description="candidates to return")] = 10,
                 fpir: Annotated[float, Form(gt=0, lt=1, description="target false positive identification rate")]
                 = 0.01) -> SearchResponse:
    [probe] = await read_images([image], 1)
    gallery = state.gallery_for(who.name, who.role)
    result = await state.run(gallery.search, image=probe, k=k, fpir=fpir, purpose=purpose, legal_basis=legal_basis)
    return SearchResponse.of(result)


@router.get("/log/head", response_model=LogHead, responses=problem_responses(401, 403, 404, 429, 500, 503, 504),
            summary="The log's head (last seq and hash): publish it to prove later that nothing was rewritten")
async def log_head(state: State, who: Annotated[Principal, Depends(authorized("log"))]) -> LogHead:
    head = await state.run(state.gallery_for(who.name, who.role).log_head)
    if head is None:
        raise Problem.of("not-found", "the gallery stores no log head (see POST /v1/log/verify)")
    return LogHead(seq=head[0], hash=head[1])


@router.post("/log/verify", response_model=LogCheckResponse, dependencies=JSON,
             responses=problem_responses(*REQUEST_ERRORS),
             summary="Check the log's hash chain and the seal (and that the log still holds a published head)")
async def log_verify(state: State, who: Annotated[Principal, Depends(authorized("log"))],
                     body: Annotated[LogVerifyRequest | None, Body()] = None) -> LogCheckResponse:
    head = None if body is None or body.head is None else (body.head.seq, body.head.hash)
    check = await state.run(state.gallery_for(who.name, who.role).integrity, head)
    return LogCheckResponse.of(check)


@router.get("/policy", response_model=PolicyDocument, responses=problem_responses(401, 429, 500, 503, 504),
            summary="The policy in force (any valid key may read the rules that bind it)")
async def get_policy(state: State, who: Annotated[Principal, Depends(authenticated())]) -> PolicyDocument:
    gallery = state.gallery_for(who.name, who.role)
    await state.run(gallery.refresh)
    return PolicyDocument.of(gallery.policy)


@router.put("/policy", response_model=PolicyDocument, dependencies=JSON, responses=problem_responses(*REQUEST_ERRORS),
            summary="Replace the policy (logged with the old and the new)")
async def put_policy(state: State, who: Annotated[Principal, Depends(authorized("policy"))],
                     document: PolicyDocument) -> PolicyDocument:
    gallery = state.gallery_for(who.name, who.role)
    await state.run(gallery.set_policy, document.policy())
    return PolicyDocument.of(gallery.policy)


@router.post("/key-rotation", response_model=KeyRotationResponse, responses=problem_responses(409, *REQUEST_ERRORS),
             summary="Re-encrypt every template under a new key, generated on the server into its key file")
async def rotate_key(state: State, who: Annotated[Principal, Depends(authorized("rotate-key"))]
                     ) -> KeyRotationResponse:
    return KeyRotationResponse.of(await state.run(state.rotate_key, who.name, who.role))
