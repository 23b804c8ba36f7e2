"""Wall-clock and peak-memory measurement that is honest on CPU and GPU.

Clock reads synchronize the CUDA device first, so asynchronous kernels are
timed where they run. Peak memory is CUDA's max-allocated counter on a GPU,
otherwise the process's peak resident set size (reset per cell where Linux
allows it through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` so that a clock read includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """Seconds on a monotonic clock, after synchronizing ``device``."""
    synchronize(device)
    return time.perf_counter()


def _vm_hwm_kib() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """Peak memory of one measured section, in MiB, and what kind of peak it is."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
        except OSError:
            self.kind = "process_lifetime_peak_rss"

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        kib = _vm_hwm_kib()
        if kib is None:
            self.kind = "process_lifetime_peak_rss"
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            kib = maxrss // 1024 if sys.platform == "darwin" else maxrss
        return kib / 1024
