"""Hugging Face ZeroGPU: model work runs inside ``spaces.GPU`` windows where the ``spaces``
package is importable; elsewhere the wrappers do nothing."""

from __future__ import annotations

try:  # Hugging Face ZeroGPU: run model work inside spaces.GPU when available
    import spaces  # type: ignore
except Exception:  # noqa: BLE001 - optional
    spaces = None


def gpu(duration: int = 60):
    """``spaces.GPU(duration=...)`` when the ``spaces`` package is importable, else a no-op."""
    def deco(fn):
        return spaces.GPU(duration=duration)(fn) if spaces is not None else fn
    return deco


def gpu_window(seconds: float):
    """The GPU window of background searches: a function that wraps a function into
    ``spaces.GPU(duration=seconds)`` when the ``spaces`` package is importable, else None
    (a search then runs in one piece; see :class:`explorer.storage.jobs.JobManager`)."""
    return gpu(seconds) if spaces is not None else None
