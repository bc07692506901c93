"""Coded concepts the task heads report with.

Every constant is a :class:`~ortho_node.model.findings.CodeTriple`. SNOMED CT (``SCT``) is used
where a code could be checked; everything else uses the private scheme :data:`PRIVATE_SCHEME`
(``99ORTHO``: code values at most 16 characters, meanings at most 64, as SH/LO require).

Sources (see ``shared/notes/dicom-results.md`` section 2):

- *source*: the concept is in pydicom's DICOM-derived dictionary
  (``pydicom.sr.codedict.codes.SCT``), i.e. it appears in a DICOM context group.
- *third-party*: several independent third-party lists agree; not checked in a SNOMED browser.

Codes the notes list as conflicting or unverified (ACL "rupture" 239725005/444798002, meniscal
tear 239720000) are deliberately not used; those findings get private codes instead.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from ortho_node.model.findings import CodeTriple

__all__ = [
    "PRIVATE_SCHEME",
    "private",
    "KNEE_JOINT",
    "HIP_JOINT",
    "ANKLE_JOINT",
    "ROTATOR_CUFF_TENDON",
    "PRESENT",
    "ABSENT",
    "YES",
    "NO",
    "OSTEOARTHRITIS_OF_KNEE",
    "ACL_INJURY",
    "KL_GRADE",
    "KL_GRADE_4Y",
    "KL_GRADE_8Y",
    "KL_GRADE_VALUES",
    "TKR_RISK",
    "TKR_PREDICTED",
    "INJURIES",
    "probability_of",
]

PRIVATE_SCHEME = "99ORTHO"
"""Private coding scheme designator; a private designator must start with "99"."""


def private(value: str, meaning: str) -> CodeTriple:
    """Return a concept in the private ``99ORTHO`` scheme.

    Parameters
    ----------
    value : str
        Code value, 1 to 16 characters (DICOM VR SH).
    meaning : str
        Code meaning, 1 to 64 characters (DICOM VR LO).

    Raises
    ------
    ValueError
        If either string is empty or too long (checked by :class:`CodeTriple`).
    """
    return CodeTriple(value, PRIVATE_SCHEME, meaning)


# --- Finding sites (anatomy) -------------------------------------------------------------
KNEE_JOINT = CodeTriple("49076000", "SCT", "Knee joint")
"""Knee joint (source: pydicom ``codes.SCT.KneeJoint``; CIDs 1000/1001/1006/8134).

Preferred over 72696002 "Knee", which is the knee *region*."""

HIP_JOINT = CodeTriple("24136001", "SCT", "Hip joint")
"""Hip joint (source: pydicom ``codes.SCT.HipJoint``)."""

ANKLE_JOINT = CodeTriple("70258002", "SCT", "Ankle joint")
"""Ankle joint (source: pydicom ``codes.SCT.AnkleJoint``)."""

ROTATOR_CUFF_TENDON = CodeTriple("245100002", "SCT", "Tendon of Rotator Cuff of Shoulder")
"""Rotator cuff tendon (source: pydicom ``codes.SCT.TendonOfRotatorCuffOfShoulder``, CID 12321)."""

# --- Qualitative values ------------------------------------------------------------------
PRESENT = CodeTriple("52101004", "SCT", "Present")
"""Present (source: pydicom ``codes.SCT.Present``, CIDs 240/241)."""

ABSENT = CodeTriple("272519000", "SCT", "Absent")
"""Absent (source: pydicom ``codes.SCT.Absent``, CIDs 240/241)."""

YES = CodeTriple("373066001", "SCT", "Yes")
"""Yes (source: pydicom ``codes.SCT.Yes``, CIDs 230/231)."""

NO = CodeTriple("373067005", "SCT", "No")
"""No (source: pydicom ``codes.SCT.No``, CIDs 230/231)."""

# --- Findings with a SNOMED CT code ------------------------------------------------------
OSTEOARTHRITIS_OF_KNEE = CodeTriple("239873007", "SCT", "Osteoarthritis of knee")
"""Osteoarthritis of knee (third-party: consistent across FHIR/Synthea-style sources)."""

ACL_INJURY = CodeTriple("444470001", "SCT", "Injury of anterior cruciate ligament")
"""Injury of anterior cruciate ligament (third-party: Synthea-derived data, consistent)."""

# --- Kellgren-Lawrence grading (no SNOMED CT or DCM concept found) -----------------------
KL_GRADE = private("KL-GRADE", "Kellgren-Lawrence grade")
"""The KL grade as an observation; LOINC 62900-6 is a protocol term, not a per-joint grade."""

KL_GRADE_VALUES: tuple[CodeTriple, ...] = tuple(
    private(f"KL-{grade}", f"Kellgren-Lawrence grade {grade}") for grade in range(5)
)
"""KL grades 0 to 4, in label order."""

KL_GRADE_4Y = private("KL-GRADE-4Y", "Predicted Kellgren-Lawrence grade at 4-year follow-up")
"""KL grade predicted for the 4-year follow-up visit (values: :data:`KL_GRADE_VALUES`)."""

KL_GRADE_8Y = private("KL-GRADE-8Y", "Predicted Kellgren-Lawrence grade at 8-year follow-up")
"""KL grade predicted for the 8-year follow-up visit (values: :data:`KL_GRADE_VALUES`)."""

# --- Total knee replacement prognosis ----------------------------------------------------
TKR_RISK = private("TKR-RISK", "Risk of total knee replacement")
"""Finding type of the TKR prognosis (no SNOMED CT finding for a *future* procedure)."""

TKR_PREDICTED = private("TKR-PRED", "Total knee replacement predicted")
"""The yes/no prognosis (values: :data:`NO`, :data:`YES`)."""

# --- Injuries without a checked SNOMED CT code (private) ---------------------------------
INJURIES: Mapping[str, CodeTriple] = MappingProxyType({
    "acl": ACL_INJURY,
    "pcl": private("PCL-INJ", "Injury of posterior cruciate ligament"),
    "mcl": private("MCL-INJ", "Injury of medial collateral ligament of knee"),
    "lcl": private("LCL-INJ", "Injury of lateral collateral ligament of knee"),
    "meniscus": private("MENISCUS-INJ", "Injury of meniscus of knee"),
    "cartilage": private("CARTILAGE-LES", "Cartilage lesion of knee"),
    "bone_contusion": private("BONE-CONTUSION", "Bone contusion of knee"),
    "mpfl": private("MPFL-INJ", "Injury of medial patellofemoral ligament"),
    "patellar_dislocation": private("PATELLA-DISLOC", "Dislocation of patella"),
    "hip_labrum": private("HIP-LABRUM-INJ", "Injury of acetabular labrum"),
    "shoulder_supraspinatus": private("SSP-TENDON-INJ", "Injury of supraspinatus tendon"),
    "ankle_atfl": private("ATFL-INJ", "Injury of anterior talofibular ligament"),
    "ankle_cfl": private("CFL-INJ", "Injury of calcaneofibular ligament"),
})
"""Finding type of each injury task, by task name. Only ACL has a (third-party) SNOMED CT code;
meniscal tear 239720000 is left out because the sources disagree."""


def probability_of(
    finding: CodeTriple, *, value: str | None = None, meaning: str | None = None
) -> CodeTriple:
    """Return the private concept naming the probability of ``finding`` (a NUM item's name).

    Parameters
    ----------
    finding : CodeTriple
        The finding (or, for graded tasks, the graded concept) the probability is about.
    value : str, optional
        Code value to use; defaults to ``"P-"`` + the finding's private code value. Required
        for non-private findings, whose numeric code values would make a poor name.
    meaning : str, optional
        Code meaning; defaults to ``"Probability of "`` + the finding's meaning, first letter
        lower-cased (pass one for meanings that start with a proper noun).

    Raises
    ------
    ValueError
        If no value is given for a non-private finding, or the result breaks SH/LO limits.
    """
    if value is None:
        if finding.scheme != PRIVATE_SCHEME:
            raise ValueError(
                f"value is required for a {finding.scheme} finding ({finding.meaning!r})"
            )
        value = f"P-{finding.value}"
    if meaning is None:
        meaning = f"Probability of {finding.meaning[0].lower()}{finding.meaning[1:]}"
    return private(value, meaning)
