"""No PHI in logs or in the reasons the admin commands show: UIDs by reference, quoted values
of third-party messages redacted."""

from __future__ import annotations

import logging

import pytest

from ortho_node.config import Settings
from ortho_node.db.models import Job, JobEvent, JobState, Study
from ortho_node.pipeline import jobs
from ortho_node.privacy import RedactQuotedValues, RedactUids, redact, uid_ref

STUDY = "2.25.123456789012345678901234567890123"
SOP = "1.2.826.0.1.3680043.8.498.5566778899"
STORE_PATH = f"/srv/ortho/var/store/{STUDY}/1.3.6.1.4.1.5962.99.1.2/{SOP}.dcm"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"[Errno 2] No such file or directory: '{STORE_PATH}'",
         f"[Errno 2] No such file or directory: '/srv/ortho/var/store/{uid_ref(STUDY)}/"
         f"{uid_ref('1.3.6.1.4.1.5962.99.1.2')}/{uid_ref(SOP)}.dcm'"),
        (f"instance {SOP}.", f"instance {uid_ref(SOP)}."),
        # not patient UIDs: DICOM's own, versions, addresses, references already made
        ("MR Image Storage 1.2.840.10008.5.1.4.1.1.4, Explicit VR 1.2.840.10008.1.2.1", None),
        ("torch 2.14.1 at 10.0.0.1:104 and 127.0.0.1", None),
        (f"study {uid_ref(STUDY)}", None),
    ],
)
def test_redact_replaces_patient_uids_only(text, expected):
    assert redact(text) == (text if expected is None else expected)


def _record(name: str, message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, exc_info)


def _formatted(record: logging.LogRecord) -> str:
    for kind in (RedactQuotedValues, RedactUids):
        kind().filter(record)
    return logging.Formatter("%(name)s: %(message)s").format(record)


def test_log_records_keep_patient_uids_and_values_out():
    try:
        open(STORE_PATH)
    except FileNotFoundError as exc:
        failure = exc
    # the node's own message stays as composed; the exception it interpolates and its traceback are redacted
    own = _formatted(_record("ortho_node.pipeline.delivery", "SOP class %s: %s", "1.2.826.0.1.3680043.8.498.1", failure, exc=failure))
    assert "1.2.826.0.1.3680043.8.498.1:" in own and SOP not in own and STUDY not in own and uid_ref(SOP) in own
    # other libraries: UIDs by reference, and pydicom / pynetdicom's quoted values gone
    celery = _formatted(_record("celery.app.trace", "Task raised unexpected: %s", failure))
    assert SOP not in celery and uid_ref(SOP) in celery
    pydicom_line = _formatted(_record("pydicom", "Invalid value for VR PN: 'SMITH^JANE'"))
    assert pydicom_line == "pydicom: Invalid value for VR PN: <redacted>"


@pytest.fixture
def settings(tmp_path) -> Settings:  # for the conftest's ``db`` (SQLite and PostgreSQL)
    return Settings(var_dir=tmp_path / "var")


def test_job_reasons_hold_uids_by_reference(db):
    """An unexpected error's text becomes the job's reason and an audit event, shown by ``jobs
    list``, ``status`` and the admin API: a store path in it is shown by reference."""
    with db.session() as session:
        study = Study(study_instance_uid=STUDY)
        session.add(study)
        session.flush()
        session.add(Job(study_id=study.id, state=JobState.RUNNING.value))
    assert jobs.fail(db, 1, f"unexpected error: FileNotFoundError: [Errno 2] No such file: '{STORE_PATH}'")
    with db.session() as session:
        reason = session.get(Job, 1).reason
        (event,) = session.query(JobEvent).all()
    for text in (reason, event.detail):
        assert SOP not in text and STUDY not in text and uid_ref(SOP) in text and text.startswith("unexpected error")
