"""The page at ``/`` for people: the audit jobs with their reports, the gallery's size, policy and log head.

Server-rendered (Jinja2, autoescaped: job titles, key names and error messages are the submitters' text),
no JavaScript at all and nothing fetched from elsewhere; a Content-Security-Policy forbids scripts, other
origins and framing, so a label that slipped through escaping could still run nothing.

How a person authenticates: an API key typed into a form, exchanged for a session cookie
(:mod:`faceaudit.service.sessions`), ``HttpOnly`` (no script can read it), ``SameSite=Strict`` (no other site
can make the browser send it, so no cross-site request forgery), ``Secure`` over HTTPS, ``Path=/``. Why this:

- HTTP Basic with the key as password would have the browser keep the key itself and attach it to every
  request, cross-site ones included, with no way to sign out; a forged request would carry it.
- Showing the page without a key would show who audits what (owners, titles, dataset names) to anyone who can
  reach the port; the gallery's facts are not secret but nothing here is for anonymous visitors either.
- The cookie holds a session token, not the key, and authenticates only the page's own read-only routes
  (this page and its report downloads): the API ignores cookies and still needs the key in a header, so the
  cookie cannot submit or cancel a job even if a browser were fooled into sending it. The sign-in form is
  refused when posted from another origin (a login CSRF would sign the victim in as the attacker).

What a signed-in person sees follows their key's role: the jobs only for a role the policy lets run
``audit`` (downloads are checked, and a refusal logged, like the API's), the log head only for ``log``;
the gallery's size and the policy itself (what every key is bound by) for any valid key. A failed sign-in
is logged like a refused API request.
"""

from __future__ import annotations

import secrets
from importlib import resources
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from faceaudit import __version__
from faceaudit.gallery.policy import PolicyError
from faceaudit.service import jobs, keys, sessions
from faceaudit.service.auth import Principal
from faceaudit.service.problems import Problem
from faceaudit.service.routes.audits import JOB_ID_PATTERN, MEDIA_TYPES
from faceaudit.service.state import ServiceState, State

router = APIRouter(include_in_schema=False)  # pages for people; the API's schema documents the API

COOKIE = "faceaudit_session"
#: Jobs shown on the page, newest first (the API lists them all).
PAGE_JOBS = 50
_ENV = jinja2.Environment(
    loader=jinja2.FunctionLoader(
        lambda name: resources.files("faceaudit.service").joinpath("templates", name).read_text()),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)




class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=200)


def _headers(nonce: str) -> dict[str, str]:
    return {
        # no script, no other origin, no framing; the one inline style block carries the nonce
        "Content-Security-Policy": f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; "
                                   "frame-ancestors 'none'; base-uri 'none'",
        "Cache-Control": "no-store",  # the page is per person: no shared cache keeps it
        "X-Content-Type-Options": "nosniff",
        # same-origin, not no-referrer: under no-referrer browsers send "Origin: null" with the sign-in form
        "Referrer-Policy": "same-origin",
    }


def _render(status: int = 200, **context: Any) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = _ENV.get_template("index.html.j2").render(nonce=nonce, version=__version__, **context)
    return HTMLResponse(html, status_code=status, headers=_headers(nonce))


async def _signed_in(request: Request, state: ServiceState) -> Principal | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    record = await state.run(sessions.session_key, state.store(), token)
    return None if record is None else Principal(record.name, record.role)


def _allowed(state: ServiceState, role: str, operation: str) -> str | None:
    """None when ``role`` may run ``operation``, else the refusing rule (for what the page leaves out)."""
    try:
        state.gallery.policy.allow(role, operation)
    except PolicyError as exc:
        return exc.rule
    return None


def _facts(state: ServiceState, who: Principal) -> dict[str, Any]:
    """Everything the page shows ``who`` (run in the thread pool: database reads)."""
    gallery = state.gallery
    gallery.refresh()  # another server process may have replaced the policy or enrolled people
    denied = {op: rule for op in ("audit", "log") if (rule := _allowed(state, who.role, op)) is not None}
    store = state.store()
    shown: list[jobs.Job] | None = None
    counts: dict[str, int] = {}
    if "audit" not in denied:
        shown = jobs.list_jobs(store, limit=PAGE_JOBS)
        counts = jobs.count_jobs(store)
    size = gallery.counts()
    return {"principal": who, "jobs": shown, "job_counts": counts, "job_total": sum(counts.values()),
            "denied": denied, "policy": gallery.policy,
            "gallery": {"subjects": size["subjects"], "templates": size["templates"],
                        "log_head": None if "log" in denied else gallery.log_head(), "log_denied": denied.get("log")}}


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, state: State) -> HTMLResponse:
    who = await _signed_in(request, state)
    if who is None:
        return _render(principal=None, login_error=None)
    if state.rates.take(who.name) is not None:  # the key's rate limit covers its page views too
        return _render(429, principal=None, login_error="Too many requests with this key; wait a minute.")
    return _render(**await state.run(_facts, state, who))


def _same_origin(request: Request) -> bool:
    """Whether a form post comes from this site: the browser says so (``Sec-Fetch-Site``, sent by current
    browsers), else its Origin (else Referer) names this host; ``Origin: null`` (a sandboxed frame, a redirect
    from elsewhere) does not. A post with none of them (a script) is accepted: it cannot be a forged cross-site
    request."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    source = request.headers.get("origin") or request.headers.get("referer")
    return source is None or urlsplit(source).netloc == request.headers.get("host", "")


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, form: Annotated[SignIn, Form()], state: State) -> Response:
    if not _same_origin(request):
        return _render(403, principal=None, login_error="Sign in from this server's own page.")
    record, why = await state.run(keys.lookup, state.store(), form.key.strip())
    if record is None:
        await _log_refusal(request, state, why)
        return _render(401, principal=None, login_error="That key is not valid (unknown, malformed or revoked).")
    token = await state.run(sessions.create_session, state.store(), record)
    done = RedirectResponse("/", status_code=303)
    done.set_cookie(COOKIE, token, max_age=sessions.SESSION_SECONDS, path="/", httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")
    return done


async def _log_refusal(request: Request, state: ServiceState, why: str) -> None:
    """A failed sign-in in the gallery's log, as the API logs a refused key (and bounded per client the same way:
    nobody can grow the log without a key)."""
    client = request.client.host if request.client is not None else "unknown"
    if state.refusal_log_rates.take(client) is not None:
        state.metrics.unlogged_refusals.inc()
        return
    gallery = state.gallery_for("anonymous", "none")
    await state.run(gallery.log_refusal, "page-login", "auth.key", {"reason": why, "route": "/login",
                                                                     "client": client})


@router.post("/logout")
async def logout(request: Request, state: State) -> Response:
    token = request.cookies.get(COOKIE)
    if token:
        await state.run(sessions.end_session, state.store(), token)
    done = RedirectResponse("/", status_code=303)
    done.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return done


@router.get("/audits/{job_id}/report.{fmt}")
async def page_report(job_id: Annotated[str, PathParam(pattern=JOB_ID_PATTERN)], fmt: Literal["tar.gz", "zip"],
                      request: Request, state: State) -> FileResponse:
    """A report download from the page (the session cookie; the API's own route takes the key in a header)."""
    who = await _signed_in(request, state)
    if who is None:
        raise Problem.of("unauthorized", "sign in on the page at / first (or use GET /v1/audits/{id}/report with "
                                         "the key in a header)")
    await state.run(state.gallery_for(who.name, who.role).require, "audit", {"route": "/audits/{id}/report"})
    job = await state.run(jobs.get_job, state.store(), job_id)
    if job is None:
        raise Problem.of("not-found", f"no audit job {job_id}")
    try:
        path = await state.run(jobs.report_archive, state.settings.jobs_folder, job, fmt)
    except jobs.JobStateError as exc:
        raise Problem.of("conflict", str(exc), state=exc.job.state) from None
    return FileResponse(path, media_type=MEDIA_TYPES[fmt], filename=f"audit-{job.id}.{fmt}")
