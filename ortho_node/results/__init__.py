"""Result objects for PACS: TID 1500 SR, Secondary Captures and Key Object Selection.

Results only *build* objects (highdicom datasets, each ``dciodvfy``-clean); delivery sends them.
The pipeline calls :class:`ResultBuilder` (SR first, then the captures) and tests and tools
:func:`build_result_objects` (both at once); the builders behind them are public too:

- :class:`FindingsReport` (``sr.py``): Comprehensive 3D SR, TID 1500 / 1410 / 1501 / 4019 / 1004 / 1600;
- :class:`FindingsCapture` (``sc.py`` + ``render.py``): RGB Secondary Capture with burned-in findings;
- :class:`FindingsKeyObjects` (``ko.py``): Key Object Selection (TID 2010);
- :class:`ResultUIDs`, :class:`PredecessorRef` (``uids.py``): deterministic UIDs and versioning.
"""

from ortho_node.results.build import ResultBuilder, ResultObject, ResultObjects, SeriesNumbers, build_result_objects
from ortho_node.results.codes import KeyObjectTitle
from ortho_node.results.ko import FindingsKeyObjects
from ortho_node.results.sc import FindingsCapture
from ortho_node.results.sr import FindingsReport
from ortho_node.results.uids import PredecessorRef, ResultKind, ResultUIDs

__all__ = [
    "FindingsCapture",
    "FindingsKeyObjects",
    "FindingsReport",
    "KeyObjectTitle",
    "PredecessorRef",
    "ResultBuilder",
    "ResultKind",
    "ResultObject",
    "ResultObjects",
    "ResultUIDs",
    "SeriesNumbers",
    "build_result_objects",
]
