"""TID 1600 Image Library with the descriptors a series shares stated once, at its group.

highdicom's :class:`~highdicom.sr.ImageLibrary` repeats every TID 1602 descriptor (modality,
rows, columns, pixel spacing, slice thickness, the six orientation cosines, ...) in every entry:
~17 content items per MR slice, most of a 30-slice report. TID 1600 row 3 lets an Image Library
Group carry the descriptors common to all its entries, which is what DCMTK's
``TID1600_ImageLibrary::moveCommonImageDescriptorsToImageGroups`` (and dcmqi with it) writes:
one group per series, the shared descriptors on the group, only what differs (here the image
position) on each entry. A single-image group keeps its descriptors on the entry, as highdicom
writes it. The descriptors themselves are highdicom's (:class:`~highdicom.sr.ImageLibraryEntryDescriptors`).

highdicom builds ~17 validated items per image (~5 ms), most of which the group then states once.
A slice whose header differs from its series' first image only in SOP Instance UID and Image
Position (Patient) has the first's descriptors but for the three position items (TID 1604), so
those three are all it builds; any other difference and highdicom describes the image afresh.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

# highdicom's own entry name (its ImageLibrary writes "Source", pydicom's codes.SCT.Source means "Source (attribute)").
_SOURCE = hd.sr.CodedConcept(value="260753009", scheme_designator="SCT", meaning="Source")
_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
# Coded concepts made once, as _SOURCE is: given a pydicom Code, highdicom converts it for every item.
_POSITION_NAMES = tuple(
    hd.sr.CodedConcept.from_code(code)
    for code in (codes.DCM.ImagePositionPatientX, codes.DCM.ImagePositionPatientY, codes.DCM.ImagePositionPatientZ)
)
_POSITION_CODES = tuple((name.value, name.scheme_designator) for name in _POSITION_NAMES)
_MILLIMETRE = hd.sr.CodedConcept.from_code(codes.UCUM.Millimeter)
_PER_IMAGE = frozenset({"SOPInstanceUID", "ImagePositionPatient"})


def _code(code: Dataset) -> tuple[str, str]:
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")
    return str(value), str(code.CodingSchemeDesignator)


def descriptor_key(item: Dataset) -> Hashable | None:
    """What makes two descriptor items the same statement: value type, relationship, concept
    name and value (a NUM's unit and, where written, its exact floating-point value too).

    ``None`` for an item never to be shared: one with children of its own (a modifier would not
    take part in the comparison) or of a value type the descriptors do not use.
    """
    if "ContentSequence" in item:
        return None
    value_type = item.ValueType
    if value_type == "NUM":
        measured = item.MeasuredValueSequence[0]
        exact = measured.get("FloatingPointValue")
        value: Hashable = (
            str(measured.NumericValue), None if exact is None else float(exact),
            _code(measured.MeasurementUnitsCodeSequence[0]),
        )
    elif value_type == "CODE":
        value = _code(item.ConceptCodeSequence[0])
    elif value_type == "TEXT":
        value = item.TextValue
    elif value_type == "UIDREF":
        value = item.UID
    else:
        return None
    return (value_type, item.RelationshipType, _code(item.ConceptNameCodeSequence[0]), value)


def _entry(image: Dataset, descriptors: Sequence[Dataset]) -> hd.sr.ImageContentItem:
    entry = hd.sr.ImageContentItem(
        name=_SOURCE,
        referenced_sop_class_uid=image.SOPClassUID,
        referenced_sop_instance_uid=image.SOPInstanceUID,
        relationship_type=_CONTAINS,
    )
    if descriptors:
        entry.ContentSequence = hd.sr.ContentSequence(list(descriptors))
    return entry


def _differs_only_in_position(image: Dataset, first: Dataset) -> bool:
    """Whether ``image`` has exactly ``first``'s attributes and values, SOP Instance UID and a
    three-valued Image Position (Patient) apart: then highdicom describes both alike but for
    the position."""
    if image.keys() != first.keys() or len(image.get("ImagePositionPatient") or ()) != 3:
        return False
    return all(image[tag].value == first[tag].value for tag in image.keys() if image[tag].keyword not in _PER_IMAGE)


def _position_item(name: hd.sr.CodedConcept, value: float) -> hd.sr.NumContentItem:
    """A TID 1604 position descriptor, as :class:`~highdicom.sr.ImageLibraryEntryDescriptors` writes it."""
    return hd.sr.NumContentItem(
        name=name, value=value, unit=_MILLIMETRE,
        relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
    )


Described = list[tuple[Hashable | None, Dataset]]  # an image's descriptors with their descriptor_key


def _keyed(items: Sequence[Dataset]) -> Described:
    return [(descriptor_key(item), item) for item in items]


def _descriptors(images: Sequence[Dataset]) -> list[Described]:
    """highdicom's descriptors of each image, keyed; see the module docstring for the slices
    that reuse the first image's (and their keys)."""
    first = _keyed(hd.sr.ImageLibraryEntryDescriptors(images[0]))
    names = [_code(item.ConceptNameCodeSequence[0]) for _, item in first]
    position_at = {names.index(code): axis for axis, code in enumerate(_POSITION_CODES) if code in names}
    described = [first]
    for image in images[1:]:
        if len(position_at) == 3 and _differs_only_in_position(image, images[0]):
            position = image.ImagePositionPatient
            own = {i: _position_item(_POSITION_NAMES[axis], position[axis]) for i, axis in position_at.items()}
            described.append([(descriptor_key(own[i]), own[i]) if i in own else pair for i, pair in enumerate(first)])
        else:
            described.append(_keyed(hd.sr.ImageLibraryEntryDescriptors(image)))
    return described


def library_group(images: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """One Image Library Group: shared descriptors first (row 3), then one entry per image (row 4)."""
    if not images:
        raise ValueError("an Image Library Group needs at least one image")
    described = _descriptors(images)
    shared: set[Hashable] = set()
    if len(described) > 1:
        shared = set.intersection(*({key for key, _ in items} for items in described)) - {None}
    group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=_CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence([item for key, item in described[0] if key in shared])
    placed: set[int] = set()  # an item reused from the first image goes into the tree once, copies elsewhere
    for image, items in zip(images, described, strict=True):
        own = [copy.deepcopy(item) if id(item) in placed else item for key, item in items if key not in shared]
        placed.update(id(item) for item in own)
        group.ContentSequence.append(_entry(image, own))
    return group


def image_library(images: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library of ``images``, one group per series in order of first appearance.

    ``images`` need the attributes :class:`~highdicom.sr.ImageLibraryEntryDescriptors` reads
    (SOP class and instance, Modality, Rows, Columns and the modality's descriptors); no pixel data.
    """
    if not images:
        raise ValueError("an Image Library needs at least one image")
    series: dict[str, list[Dataset]] = {}
    for image in images:
        if not image.get("SeriesInstanceUID"):
            raise ValueError("every image of an Image Library needs its Series Instance UID (groups are per series)")
        series.setdefault(str(image.SeriesInstanceUID), []).append(image)
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=_CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence([library_group(members) for members in series.values()])
    return library
