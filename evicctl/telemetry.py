"""Host telemetry for the dashboard and `evicctl tiers`: GPUs (NVML), host memory and swap, disk.

Every reading degrades instead of raising (the nvitop rule): a field that cannot be read
is None and renders as N/A; no driver or no GPU gives `gpus=()` and a `gpu_status` line
saying why. `TelemetryReader.read()` returns one immutable `Telemetry` with its timestamp.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class GpuTelemetry:
    """One GPU; None means the field could not be read (N/A)."""

    index: int
    name: str | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    utilization_pct: float | None  # SM busy over NVML's last sample period
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None


@dataclass(frozen=True)
class HostTelemetry:
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    swap_used_bytes: int | None
    swap_total_bytes: int | None


@dataclass(frozen=True)
class DiskTelemetry:
    path: str  # the directory asked for (its nearest existing parent was measured)
    used_bytes: int | None
    total_bytes: int | None
    free_bytes: int | None


@dataclass(frozen=True)
class Telemetry:
    taken_at: float  # unix seconds
    gpus: tuple[GpuTelemetry, ...]
    gpu_status: str | None  # None when NVML answered; else "no GPU (why)"
    host: HostTelemetry
    disk: DiskTelemetry | None


def _try(read: Callable[[], T]) -> T | None:
    """One field: its value, or None (N/A) on any error."""
    try:
        return read()
    except Exception:
        return None


def _decode(name: Any) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


class TelemetryReader:
    """Reads `Telemetry`. Thread-safe; NVML is initialised once, on the first read.

    `nvml` is the pynvml module (injectable for tests); `disk_path` the cache directory
    whose file system is measured (None: no disk row).
    """

    def __init__(self, disk_path: Path | str | None = None, *, nvml: ModuleType | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.disk_path = Path(disk_path) if disk_path is not None else None
        self._nvml = nvml
        self._clock = clock
        self._lock = threading.Lock()
        self._nvml_ready = False
        self._nvml_status: str | None = None  # set once NVML init failed

    def read(self) -> Telemetry:
        gpus, status = self._read_gpus()
        return Telemetry(
            taken_at=self._clock(),
            gpus=gpus,
            gpu_status=status,
            host=read_host(),
            disk=read_disk(self.disk_path) if self.disk_path is not None else None,
        )

    def close(self) -> None:
        with self._lock:
            if self._nvml_ready:
                _try(self._nvml.nvmlShutdown)
                self._nvml_ready = False

    def _init_nvml(self) -> str | None:
        """Init once; returns the "no GPU" status line, or None when NVML is usable."""
        if self._nvml_ready or self._nvml_status is not None:
            return self._nvml_status
        try:
            if self._nvml is None:
                import pynvml  # nvidia-ml-py

                self._nvml = pynvml
            self._nvml.nvmlInit()
        except Exception as exc:  # no library, no driver, no permission: all "no GPU"
            self._nvml_status = f"no GPU ({_nvml_reason(exc)})"
            return self._nvml_status
        self._nvml_ready = True
        return None

    def _read_gpus(self) -> tuple[tuple[GpuTelemetry, ...], str | None]:
        with self._lock:
            status = self._init_nvml()
            if status is not None:
                return (), status
            count = _try(self._nvml.nvmlDeviceGetCount)
            if count is None:
                return (), "no GPU (NVML could not count devices)"
            if count == 0:
                return (), "no GPU (NVML found no devices)"
            return tuple(self._read_gpu(i) for i in range(count)), None

    def _read_gpu(self, index: int) -> GpuTelemetry:
        nv = self._nvml
        handle = _try(lambda: nv.nvmlDeviceGetHandleByIndex(index))
        if handle is None:
            return GpuTelemetry(index, None, None, None, None, None, None, None)
        memory = _try(lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        util = _try(lambda: nv.nvmlDeviceGetUtilizationRates(handle))
        power_mw = _try(lambda: nv.nvmlDeviceGetPowerUsage(handle))
        limit_mw = _try(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle))
        return GpuTelemetry(
            index=index,
            name=_try(lambda: _decode(nv.nvmlDeviceGetName(handle))),
            memory_used_bytes=_try(lambda: int(memory.used)),
            memory_total_bytes=_try(lambda: int(memory.total)),
            utilization_pct=_try(lambda: float(util.gpu)),
            temperature_c=_try(lambda: float(
                nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))),
            power_w=None if power_mw is None else power_mw / 1000.0,  # NVML reports milliwatts
            power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
        )


def _nvml_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "Library Not Found" in text or isinstance(exc, ImportError):
        return "NVML library not found"
    if "Driver Not Loaded" in text:
        return "NVIDIA driver not loaded"
    return f"NVML: {text}"


def read_host() -> HostTelemetry:
    try:
        import psutil
    except Exception:
        return HostTelemetry(None, None, None, None)
    memory = _try(psutil.virtual_memory)
    swap = _try(psutil.swap_memory)
    return HostTelemetry(
        # used = total - available: what applications hold, page cache excluded.
        memory_used_bytes=_try(lambda: int(memory.total - memory.available)),
        memory_total_bytes=_try(lambda: int(memory.total)),
        swap_used_bytes=_try(lambda: int(swap.used)),
        swap_total_bytes=_try(lambda: int(swap.total)),
    )


def read_disk(path: Path) -> DiskTelemetry:
    """Usage of the file system holding `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    usage = _try(lambda: shutil.disk_usage(probe))
    if usage is None:
        return DiskTelemetry(str(path), None, None, None)
    return DiskTelemetry(str(path), int(usage.used), int(usage.total), int(usage.free))


def disk_folder(description) -> Path:
    """The folder whose file system the dashboard measures: the disk tier folder the manager
    described (`ManagerDescription.disk_dir`, the one it writes), else its cache dir, else the
    default cache dir (no manager has run on this database yet)."""
    if description is not None and (description.disk_dir or description.cache_dir):
        return Path(description.disk_dir or description.cache_dir)
    from evicctl.config import default_cache_dir

    return default_cache_dir()
