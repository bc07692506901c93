"""The HTTP side of the node: health, Prometheus metrics and the admin status API (FastAPI).

One router per area. The admin router carries its auth as a dependency, so no admin route can
forget it: a bearer token when ``http.admin_token`` is set; without one the server only binds
to a loopback address (checked at start-up).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from ortho_node.config import Settings
from ortho_node.db.engine import Database
from ortho_node.status import collect_status

_bearer = HTTPBearer(auto_error=False)


def create_app(settings: Settings, db: Database, registry: CollectorRegistry) -> FastAPI:
    app = FastAPI(title="ortho-node", version="1", docs_url=None, redoc_url=None)
    token = settings.http.admin_token.get_secret_value() if settings.http.admin_token else None

    def require_admin(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if token is None:
            return  # loopback-only server (enforced at start-up)
        if credentials is None or not secrets.compare_digest(credentials.credentials, token):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid admin bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

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
    return app
