"""Durable, write-once instance storage."""

from ortho_node.store.instance_store import (
    InstanceStore,
    InvalidUidError,
    PutResult,
    StoreError,
    StoreFullError,
    StoreWriteError,
)

__all__ = ["InstanceStore", "InvalidUidError", "PutResult", "StoreError", "StoreFullError", "StoreWriteError"]
