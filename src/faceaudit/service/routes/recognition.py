"""Stateless recognition: faces in an image, vectors of images, 1:1 verification (two images, or an image against
an enrolled subject). Nothing here stores an image or a vector; verification against a subject is the gallery's
and logged there."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from faceaudit.api import detect as detect_faces
from faceaudit.api import embed_images
from faceaudit.api import verify as verify_pair
from faceaudit.service.auth import Principal, authorized
from faceaudit.service.limits import MULTIPART, read_images
from faceaudit.service.models import (
    CalibrationIdentityModel,
    DetectResponse,
    EmbeddedImage,
    EmbedResponse,
    FaceModel,
    SubjectId,
    VerifyResponse,
)
from faceaudit.service.problems import REQUEST_ERRORS, Problem, problem_responses
from faceaudit.service.state import State

router = APIRouter(prefix="/v1", tags=["recognition"])


@router.post("/detect", response_model=DetectResponse, dependencies=MULTIPART,
             responses=problem_responses(*REQUEST_ERRORS), summary="Every face in an image: box, 5 landmarks, score")
async def detect(state: State, who: Annotated[Principal, Depends(authorized("detect"))],
                 image: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP")]) -> DetectResponse:
    [data] = await read_images([image], 1)
    faces = await state.run(detect_faces, data, engine=state.engine_name,
                            max_pixels=state.settings.max_image_pixels)
    return DetectResponse(engine=str(state.engine_name), faces=[FaceModel.of(f) for f in faces])


@router.post("/embed", response_model=EmbedResponse, dependencies=MULTIPART,
             responses=problem_responses(*REQUEST_ERRORS),
             summary="The embedding of the subject face of each image (or why none could be made)")
async def embed(state: State, who: Annotated[Principal, Depends(authorized("embed"))],
                images: Annotated[list[UploadFile], File(description="one or more images")]) -> EmbedResponse:
    data = await read_images(images, state.settings.max_images_per_request)
    names = [f.filename or f"image {i + 1}" for i, f in enumerate(images)]
    results = await state.run(embed_images, data, engine=state.engine_name,
                              max_pixels=state.settings.max_image_pixels, names=names)
    return EmbedResponse(engine=str(state.engine_name),
                         results=[EmbeddedImage.of(i, images[i].filename, r[0]) for i, r in enumerate(results)])


@router.post("/verify", response_model=VerifyResponse, dependencies=MULTIPART,
             responses=problem_responses(404, *REQUEST_ERRORS),
             summary="1:1: does the image show the same person as the reference image, or as the enrolled subject?")
async def verify(state: State, who: Annotated[Principal, Depends(authorized("verify"))],
                 image: Annotated[UploadFile, File(description="the probe")],
                 reference: Annotated[UploadFile | None, File(description="a second image (or subject_id)")] = None,
                 subject_id: Annotated[SubjectId | None, Form(description="an enrolled subject (or give reference)")]
                 = None,
                 fmr: Annotated[float | None, Form(gt=0, lt=1, description="target false match rate (default 1e-4; "
                                                   "with the server's fairness calibration, the FMR it was fitted "
                                                   "at)")] = None,
                 ) -> VerifyResponse:
    if (reference is None) == (subject_id is None):
        raise Problem.of("invalid-input", "give either a reference image or a subject_id, not both or neither")
    if subject_id is not None:
        [probe] = await read_images([image], 1)
        gallery = state.gallery_for(who.name, who.role)
        r = await state.run(gallery.verify, subject_id, image=probe, fmr=fmr)
        return VerifyResponse(mode="subject", match=r["match"], score=r["score"], threshold=r["threshold"],
                              target_fmr=r["fmr"], subject_id=subject_id, engine=gallery.settings.engine,
                              calibration=_identity(r["calibration"]))
    assert reference is not None
    a, b = await read_images([image, reference], 2)
    # the gallery's fairness calibration (checked against the engine when the server started), or raw scores
    v = await state.run(verify_pair, a, b, fmr=fmr, engine=state.engine_name,
                        max_pixels=state.settings.max_image_pixels, calibration=state.gallery.calibration)
    return VerifyResponse(mode="pair", match=v.match, score=v.score, threshold=v.threshold, target_fmr=v.target_fmr,
                          engine=v.engine, failures=list(v.failures), calibration=_identity(v.fairness_calibration))


def _identity(calibration: dict[str, Any] | None) -> CalibrationIdentityModel | None:
    return None if calibration is None else CalibrationIdentityModel.model_validate(calibration)
