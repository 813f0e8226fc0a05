"""Peak memory of a run: the CUDA allocator's peak on GPU, else the process RSS sampled every 20 ms."""

from __future__ import annotations

import threading

import psutil
import torch


class PeakMemory:
    """Measure the peak memory between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Reset the peak and start sampling (on CPU) or reset CUDA's peak statistics."""
        self.peak = 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            return
        self._stop.clear()
        proc = psutil.Process()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                self._stop.wait(0.02)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """Peak in MiB since :meth:`start`."""
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak / 2**20
