"""Error responses as RFC 9457 problem details (``application/problem+json``).

FastAPI answers errors with ``{"detail": ...}`` as ``application/json``; clients of an HTTP API
(and the project's rule: bad input gets a precise problem response and a log line) expect the
standard shape: ``type``, ``title``, ``status``, ``detail``. ``detail`` stays where FastAPI puts it,
so clients reading it keep working. Per-instance STOW-RS outcomes are not errors of this kind:
they are DICOM JSON (PS3.18) and built in :mod:`ortho_node.web.stow`.

The log line names the method and the route template, never the request's path: a study UID in
``/dicomweb/studies/{study_uid}`` is the patient's.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(status_code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status_code).phrase, "status": status_code, "detail": detail}
    return JSONResponse(body, status_code=status_code, headers=headers, media_type=PROBLEM_JSON)


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "(no route)"


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every HTTP error and request validation error of ``app`` as problem details."""

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, exc: HTTPException) -> JSONResponse:
        level = logging.WARNING if exc.status_code >= 500 else logging.INFO
        log.log(level, "HTTP %d for %s %s: %s", exc.status_code, request.method, _route_of(request), exc.detail)
        return problem_response(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
        # field locations and messages only: the rejected input itself may hold PHI
        errors = [{"loc": list(error.get("loc", ())), "msg": error.get("msg", "")} for error in exc.errors()]
        log.info("HTTP 422 for %s %s: %d invalid field(s)", request.method, _route_of(request), len(errors))
        return problem_response(422, errors)
