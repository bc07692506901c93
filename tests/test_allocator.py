"""The malloc thresholds for image preparation: freed image-sized blocks are reused, not
faulted in afresh from the kernel each time (counted in page faults, not timed)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from ortho_node import allocator

# Three 4 MiB arrays made, written and freed twenty times: what preparing radiographs does.
_WORKLOAD = """
import resource, sys
import numpy as np
from ortho_node.allocator import keep_freed_memory_for_reuse
if sys.argv[1] == "tuned":
    assert keep_freed_memory_for_reuse()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    arrays = [np.ones((1024, 1024), dtype=np.float32) for _ in range(3)]
    del arrays
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", _WORKLOAD, mode], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_image_buffers_are_reused_instead_of_faulted_in_again() -> None:
    plain, tuned = _page_faults("plain"), _page_faults("tuned")
    # 60 arrays of 1,024 pages: without the thresholds most are faulted in anew.
    assert plain > 10 * 1024
    assert tuned < plain / 4


def test_without_mallopt_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_libc(*args: object, **kwargs: object) -> None:
        raise OSError("no C library here")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert allocator.keep_freed_memory_for_reuse() is False
