"""The HTTP side of the node: health, Prometheus metrics, the admin status API and DICOMweb
STOW-RS (FastAPI).

One router per area. The admin router carries its auth as a dependency, so no admin route can
forget it: a bearer token when ``http.admin_token`` is set; without one the server only binds
to a loopback address (checked at start-up).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.ingest.service import IngestService
from ortho_node.status import collect_status
from ortho_node.web.metrics import StowMetrics
from ortho_node.web.problems import install_problem_handlers
from ortho_node.web.stow import stow_router

_bearer = HTTPBearer(auto_error=False)


def bearer_check(token: str | None, what: str) -> Callable[..., None]:
    """A dependency requiring ``Authorization: Bearer <token>``; None lets every request in
    (only allowed on a loopback-only server, enforced at start-up)."""

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials, token):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"a valid {what} bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


def create_app(
    settings: Settings, db: Database, registry: CollectorRegistry, ingest: IngestService | None = None
) -> FastAPI:
    app = FastAPI(title="ortho-node", version="1", docs_url=None, redoc_url=None)
    install_problem_handlers(app)
    http = settings.http
    admin_token = http.admin_token.get_secret_value() if http.admin_token else None
    require_admin = bearer_check(admin_token, "admin")

    health = APIRouter(tags=["health"])

    @health.get("/healthz")
    def healthz() -> dict:
        try:
            with db.connection() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"index database unavailable: {type(exc).__name__}") from exc
        return {"status": "ok"}

    @health.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    admin = APIRouter(prefix="/api", tags=["admin"], dependencies=[Depends(require_admin)])

    @admin.get("/status")
    def node_status(request: Request) -> dict:
        return asdict(collect_status(db, quarantine_dir=settings.quarantine_dir))

    app.include_router(health)
    app.include_router(admin)
    if ingest is not None:
        stow_token = http.stow_token.get_secret_value() if http.stow_token else admin_token
        app.include_router(
            stow_router(
                ingest,
                max_bytes=http.stow_max_bytes,
                authorise=bearer_check(stow_token, "STOW-RS"),
                metrics=StowMetrics(registry),
            )
        )
    return app
