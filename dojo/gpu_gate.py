"""The GPU-idle gate (the old system's Task Master): a background job on the eval GPU (sparring) starts only when
that GPU is idle enough — NVML utilisation below ``spar.idle_max_utilization`` percent and at least
``spar.idle_min_free_memory`` of its memory free, in every one of ``spar.idle_samples`` readings taken
``spar.idle_sample_seconds`` apart. While it is busy the gate says so (``on_wait``: one line per wait), sleeps
``spar.idle_retry_seconds`` and looks again; after ``spar.idle_timeout_seconds`` it gives up with ``GpuBusy``,
naming the GPU and its last reading.

No NVIDIA GPU, or no ``pynvml`` (the ``nvidia-ml-py`` distribution): the gate passes and says why. The probe is a
plain function returning one ``Reading`` per GPU, so tests inject a fake one.

Which GPUs: those of the job's ``CUDA_VISIBLE_DEVICES`` when it lists indices (the eval pool's job variables set
it from ``pipeline.eval_gpus``), else every GPU NVML sees. One background job per eval GPU at a time is Prefect's
part: a global concurrency limit per GPU (``slot_names``), created by ``dojo up``.

No prefect here (``tasks/spar.py`` wraps it).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Reading:
    """One GPU at one moment."""
    index: int              # NVML index (the number CUDA_VISIBLE_DEVICES uses)
    utilization: float      # percent, 0-100
    free_fraction: float    # free memory / total memory, 0-1


@dataclass(frozen=True)
class GateResult:
    passed: bool
    waited_seconds: float
    waits: int              # busy verdicts before it passed (or gave up)
    message: str            # what the gate decided, for the log and the run's artifact


class GpuBusy(TimeoutError):
    """The GPU stayed busy for the whole timeout; the background job does not run."""


def nvml_probe() -> list[Reading] | None:
    """Utilisation and free memory of every NVIDIA GPU through NVML; None when there is no NVIDIA GPU or no pynvml."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(Reading(i, float(util), mem.free / mem.total if mem.total else 0.0))
        return out or None
    finally:
        pynvml.nvmlShutdown()


def visible_gpus(env: dict | None = None) -> list[int] | None:
    """The GPU indices in ``CUDA_VISIBLE_DEVICES``, or None when it is unset, empty or not plain indices (UUIDs)."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES", "").strip()
    parts = [p.strip() for p in value.split(",") if p.strip()]
    return [int(p) for p in parts] if parts and all(p.isdigit() for p in parts) else None


def slot_names(cfg, env: dict | None = None) -> list[str]:
    """The Prefect global concurrency limit names a background job occupies: one per eval GPU it can see
    (``CUDA_VISIBLE_DEVICES``, else ``pipeline.eval_gpus``), each allowing one job at a time."""
    gpus = visible_gpus(env)
    if gpus is None:
        gpus = visible_gpus({"CUDA_VISIBLE_DEVICES": cfg.pipeline.eval_gpus}) or [0]
    return [f"dojo-background-gpu-{g}" for g in gpus]


def all_slot_names(cfg) -> list[str]:
    """One limit name per GPU in ``pipeline.eval_gpus`` (what ``dojo up`` creates)."""
    return slot_names(cfg, {"CUDA_VISIBLE_DEVICES": cfg.pipeline.eval_gpus})


def _busy(readings: list[Reading], max_util: float, min_free: float) -> Reading | None:
    """The first reading that is too busy, or None."""
    return next((r for r in readings if r.utilization >= max_util or r.free_fraction < min_free), None)


def _describe(r: Reading) -> str:
    return f"GPU {r.index}: utilisation {r.utilization:.0f}%, {100 * r.free_fraction:.0f}% memory free"


def wait_until_idle(cfg, probe: Callable[[], list[Reading] | None] = nvml_probe, gpus: list[int] | None = None,
                    on_wait: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> GateResult:
    """Return when the GPUs are idle enough (module docstring); ``GpuBusy`` after ``spar.idle_timeout_seconds``.
    ``gpus``: the indices to watch (default ``visible_gpus()``; None = every GPU the probe reports)."""
    s = cfg.spar
    gpus = visible_gpus() if gpus is None else gpus
    started, waits = clock(), 0
    rule = f"utilisation < {s.idle_max_utilization:g}% and >= {100 * s.idle_min_free_memory:g}% memory free"
    while True:
        busy = None
        for i in range(s.idle_samples):
            readings = probe()
            if readings is None:
                return GateResult(True, clock() - started, waits,
                                  "no NVIDIA GPU (or no pynvml) here: the GPU-idle gate passes")
            watched = [r for r in readings if gpus is None or r.index in gpus] or readings
            busy = _busy(watched, s.idle_max_utilization, s.idle_min_free_memory)
            if busy is not None:
                break
            if i + 1 < s.idle_samples:
                sleep(s.idle_sample_seconds)
        waited = clock() - started
        if busy is None:
            return GateResult(True, waited, waits, f"GPU idle ({rule} in {s.idle_samples} readings) after "
                                                   f"{waited:.0f}s and {waits} wait(s)")
        if waited + s.idle_retry_seconds > s.idle_timeout_seconds:
            raise GpuBusy(f"gave up after {waited:.0f}s ({waits + 1} busy readings; spar.idle_timeout_seconds="
                          f"{s.idle_timeout_seconds:g}): {_describe(busy)}; a background job needs {rule}")
        waits += 1
        on_wait(f"waiting for an idle GPU ({waits}): {_describe(busy)}; needs {rule}; next look in "
                f"{s.idle_retry_seconds:g}s, giving up after {s.idle_timeout_seconds:g}s")
        sleep(s.idle_retry_seconds)
