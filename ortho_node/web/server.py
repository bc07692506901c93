"""Run the HTTP app in a thread of the serving process (uvicorn)."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

from ortho_node.config import HttpSettings

log = logging.getLogger(__name__)


class InsecureAdminApiError(ValueError):
    """The admin API would listen on a non-loopback address without a token."""


def check_exposure(settings: HttpSettings) -> None:
    if settings.admin_token is not None:
        return
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if not loopback:
        raise InsecureAdminApiError(
            f"http.host is {settings.host}: set http.admin_token (ORTHO_HTTP__ADMIN_TOKEN) before exposing the admin API"
        )


class HttpServer:
    def __init__(self, app: FastAPI, settings: HttpSettings) -> None:
        check_exposure(settings)
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)

    def start(self, timeout: float = 15.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start (port in use?)")
            time.sleep(0.05)
        log.info("HTTP (health, metrics, admin API, STOW-RS) on %s:%d", self._server.config.host, self._server.config.port)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
