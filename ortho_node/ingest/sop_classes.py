"""Which storage SOP classes belong to a knee imaging workflow.

All storage SOP classes are accepted (nothing a PACS routes to the node is refused for its
class); instances outside this set are stored and indexed with an out-of-scope reason, and
never reach the model.
"""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom import sop_class

KNEE_WORKFLOW_SOP_CLASSES: frozenset[str] = frozenset(
    {
        sop_class.ComputedRadiographyImageStorage,
        sop_class.DigitalXRayImageStorageForPresentation,
        sop_class.DigitalXRayImageStorageForProcessing,
        sop_class.MRImageStorage,
        sop_class.EnhancedMRImageStorage,
        sop_class.CTImageStorage,
        sop_class.EnhancedCTImageStorage,
        sop_class.SecondaryCaptureImageStorage,
        sop_class.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
        sop_class.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    }
)


def out_of_scope_reason(sop_class_uid: str) -> str | None:
    """None for a knee-workflow SOP class, else a reason an admin can read."""
    if sop_class_uid in KNEE_WORKFLOW_SOP_CLASSES:
        return None
    name = UID(sop_class_uid).name
    return f"SOP class not analysed by the node: {name or sop_class_uid}"[:128]
