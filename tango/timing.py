"""Device-aware stopwatch: CUDA events on GPU, ``perf_counter`` on CPU.

Each named region is recorded once per request. On CUDA the events are resolved with one synchronize at the end of
the request (``results()``), so timing adds no host syncs between kernels.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class Stopwatch:
    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self._events: dict[str, tuple] = {}

    def now(self):
        """A point in time: a recorded CUDA event, or a host clock reading."""
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def span(self, name: str, start, end) -> None:
        self._events[name] = (start, end)

    @contextmanager
    def __call__(self, name: str):
        start = self.now()
        try:
            yield
        finally:
            self.span(name, start, self.now())

    def results(self) -> dict[str, float]:
        """Milliseconds per region."""
        if self.cuda:
            torch.cuda.synchronize()
            return {k: s.elapsed_time(e) for k, (s, e) in self._events.items()}
        return {k: (e - s) * 1e3 for k, (s, e) in self._events.items()}
