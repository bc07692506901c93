"""Which label columns feed which task heads, and how a value becomes a class index.

Heads come from the node's registry (:mod:`ortho_node.model.heads`); this module only maps
label sources onto them:

- a column named after a registered head (``kl_grade``, ``acl``, ``pcl``, ...) feeds that head;
- the phantom / OAI-style columns ``acl_tear`` and ``meniscus_tear`` feed ``acl`` and
  ``meniscus``;
- ``oa_present`` is derived from ``kl_grade`` (radiographic OA = KL >= 2) when no column of its
  own is given.

Values may be given as the class index (``"3"``, ``"1"``), as the label text of the head
(``"present"``), or as booleans (``"true"``/``"false"``) for binary heads. Empty cells mean
"not labelled for this task".
"""

from __future__ import annotations

from collections.abc import Mapping

from ortho_node.model.findings import HeadKind
from ortho_node.model.heads import HeadSpec, head_spec, list_heads

__all__ = [
    "COLUMN_ALIASES",
    "DEMO_TASKS",
    "OA_KL_THRESHOLD",
    "encode_label",
    "labels_from_row",
]

COLUMN_ALIASES: Mapping[str, str] = {"acl_tear": "acl", "meniscus_tear": "meniscus"}
"""Label columns whose name differs from the head they feed."""

OA_KL_THRESHOLD = 2
"""Radiographic knee OA is KL grade >= 2 (the ``oa_present`` head's definition)."""

DEMO_TASKS: tuple[str, ...] = ("kl_grade", "oa_present", "acl", "meniscus")
"""Heads the phantoms carry labels for (and the demo bundle trains)."""

_TRUE = {"true", "yes", "y", "t"}
_FALSE = {"false", "no", "n", "f"}


def encode_label(spec: HeadSpec, value: object) -> int:
    """Turn one label value into a class index of ``spec``.

    Parameters
    ----------
    spec : HeadSpec
        The head the value is for.
    value : object
        An int index, a label text of the head, or (binary heads) a bool or boolean word.

    Returns
    -------
    int
        Index into ``spec.labels``.

    Raises
    ------
    ValueError
        If the value names no class of the head.
    """
    if isinstance(value, bool):
        if spec.kind is not HeadKind.BINARY:
            raise ValueError(f"head {spec.name!r} is {spec.kind.value}; a bool label needs binary")
        return int(value)
    if isinstance(value, int):
        index = value
    else:
        text = str(value).strip()
        lowered = text.lower()
        if text in spec.labels:
            return spec.labels.index(text)
        if spec.kind is HeadKind.BINARY and lowered in _TRUE | _FALSE:
            return int(lowered in _TRUE)
        try:
            index = int(float(text))
        except ValueError:
            raise ValueError(
                f"label {text!r} is not a class of head {spec.name!r} "
                f"(labels {list(spec.labels)} or indices 0-{len(spec.labels) - 1})"
            ) from None
    if not 0 <= index < len(spec.labels):
        raise ValueError(
            f"label index {index} is out of range for head {spec.name!r} "
            f"(0-{len(spec.labels) - 1})"
        )
    return index


def labels_from_row(row: Mapping[str, object]) -> dict[str, int]:
    """Task labels of one CSV row (or phantom series labels) as ``{head name: class index}``.

    Parameters
    ----------
    row : Mapping
        Column name to value; unknown columns are ignored, empty values mean unlabelled.

    Raises
    ------
    ValueError
        If a labelled value does not fit its head (the message names the column).
    """
    known = set(list_heads())
    labels: dict[str, int] = {}
    for column, value in row.items():
        head = COLUMN_ALIASES.get(column, column)
        if head not in known or value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            labels[head] = encode_label(head_spec(head), value)
        except ValueError as exc:
            raise ValueError(f"column {column!r}: {exc}") from exc
    if "kl_grade" in labels and "oa_present" not in labels:
        labels["oa_present"] = int(labels["kl_grade"] >= OA_KL_THRESHOLD)
    return labels
