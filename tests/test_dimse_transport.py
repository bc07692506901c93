"""Transport options of the SCP against real peers: DICOM TLS (mutual) and the association limit."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ortho_node.phantoms import MRPhantomSpec, write_knee_study
from tests.support.peers import storescu

pytestmark = pytest.mark.timeout(300)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(root: Path, name: str) -> dict[str, Path]:
    """A CA and two certificates it signs (server for 127.0.0.1, client), in PEM."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = root / "ca.key", root / "ca.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
            "-days", "2", "-subj", f"/CN={name} test CA")
    files = {"ca": ca_crt}
    for role in ("server", "client"):
        key, csr, crt = root / f"{role}.key", root / f"{role}.csr", root / f"{role}.crt"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                "-subj", f"/CN={name} {role}")
        ext = root / f"{role}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if role == "server" else "extendedKeyUsage=clientAuth\n")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
                "-out", str(crt), "-days", "2", "-extfile", str(ext))
        files[f"{role}_key"], files[f"{role}_crt"] = key, crt
    return files


def test_mutual_tls_accepts_a_client_signed_by_the_ca_and_refuses_others(node_factory, tmp_path):
    pki = make_pki(tmp_path / "pki", "hospital")
    rogue = make_pki(tmp_path / "rogue", "rogue")
    node = node_factory(
        dimse={"tls": {"cert": str(pki["server_crt"]), "key": str(pki["server_key"]), "ca": str(pki["ca"]),
                       "require_client_cert": True}},
        worker={"embedded": False},
    ).start()
    study = write_knee_study(tmp_path / "s", seed=4, mr_series=[MRPhantomSpec(slices=8, rows=64, columns=64)])
    files = [f.path for f in study.files]

    trusted = storescu(node.port, files, extra=("+tls", str(pki["client_key"]), str(pki["client_crt"]), "+cf", str(pki["ca"])))
    assert trusted.returncode == 0, trusted.output[-2000:]
    assert trusted.output.count("Received Store Response (Success)") == len(files)

    untrusted = storescu(node.port, files[:1], extra=("+tls", str(rogue["client_key"]), str(rogue["client_crt"]), "+cf", str(pki["ca"])))
    assert untrusted.returncode != 0
    plain = storescu(node.port, files[:1])
    assert plain.returncode != 0 and "Success" not in plain.output
    stored = [p for p in (node.var_dir / "store").rglob("*.dcm") if ".tmp" not in p.parts]
    assert len(stored) == len(files)


def test_association_limit_rejects_the_one_too_many_and_recovers(node_factory):
    node = node_factory(dimse={"max_associations": 1, "acse_timeout_s": 1.0}, worker={"embedded": False}).start()
    time.sleep(1.5)  # the start-up port probe holds an association slot until the ACSE timeout
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification, ExplicitVRLittleEndian)
    first = ae.associate("127.0.0.1", node.port, ae_title="ORTHO")
    assert first.is_established
    second = ae.associate("127.0.0.1", node.port, ae_title="ORTHO")
    assert second.is_rejected
    rejection = second.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x02, 0x03, 0x02)  # local limit exceeded
    first.release()
    third = ae.associate("127.0.0.1", node.port, ae_title="ORTHO")
    assert third.is_established
    assert third.send_c_echo().Status == 0x0000
    third.release()
