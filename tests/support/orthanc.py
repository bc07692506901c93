"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) as the PACS, one per test, on loopback."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.peers import free_port, require_tool

PLUGINS = "/usr/share/orthanc/plugins"


class Orthanc:
    def __init__(self, workdir: Path, *, aet: str = "TESTPACS", modalities: dict[str, list[Any]] | None = None) -> None:
        self.workdir = workdir
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.dicomweb_servers: dict[str, list[str]] = {}  # name -> [url, (user, password)]
        self.lua_scripts: list[Path] = []  # e.g. a ReceivedInstanceFilter: a PACS with its own rules
        self.process: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self) -> "Orthanc":
        binary = require_tool("Orthanc")
        config = {
            "Name": self.aet,
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": self.modalities,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "Plugins": [PLUGINS],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": self.dicomweb_servers},
            "StableAge": 2,
            "LuaScripts": [str(path) for path in self.lua_scripts],
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        log = open(self.workdir / "orthanc.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.workdir / 'orthanc.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("Orthanc did not answer /system")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def upload(self, file: Path) -> dict:
        response = httpx.post(f"{self.url}/instances", content=file.read_bytes(), timeout=60)
        response.raise_for_status()
        return response.json()

    def study_id(self, study_instance_uid: str) -> str:
        found = httpx.post(
            f"{self.url}/tools/lookup", content=study_instance_uid, timeout=30
        ).json()
        ids = [item["ID"] for item in found if item["Type"] == "Study"]
        if not ids:
            raise LookupError("study not in Orthanc")
        return ids[0]

    def push_study_to(self, modality: str, study_instance_uid: str) -> dict:
        """What a PACS routing rule does: C-STORE the whole study to a configured modality."""
        response = httpx.post(
            f"{self.url}/modalities/{modality}/store", content=self.study_id(study_instance_uid), timeout=300
        )
        response.raise_for_status()
        return response.json()

    def stow_study_to(self, server: str, study_instance_uid: str) -> dict:
        """Orthanc's DICOMweb client sends the whole study by STOW-RS to a configured server."""
        response = httpx.post(
            f"{self.url}/dicom-web/servers/{server}/stow",
            json={"Resources": [self.study_id(study_instance_uid)], "Synchronous": True},
            timeout=300,
        )
        response.raise_for_status()
        return response.json()

    def instances_of_study(self, study_instance_uid: str) -> list[dict]:
        """Simplified tags of every instance Orthanc holds for the study."""
        try:
            orthanc_id = self.study_id(study_instance_uid)
        except LookupError:
            return []
        return [self.get(f"/instances/{i['ID']}/simplified-tags") for i in self.get(f"/studies/{orthanc_id}/instances")]

    def download_study(self, study_instance_uid: str, folder: Path) -> list[Path]:
        """Every instance Orthanc holds for the study, as the Part 10 files it stored."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for item in self.get(f"/studies/{self.study_id(study_instance_uid)}/instances"):
            response = httpx.get(f"{self.url}/instances/{item['ID']}/file", timeout=60)
            response.raise_for_status()
            path = folder / f"{item['ID']}.dcm"
            path.write_bytes(response.content)
            paths.append(path)
        return paths
