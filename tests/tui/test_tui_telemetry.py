"""Telemetry never raises: NVML fields degrade to N/A one by one, no driver means "no GPU"."""

from __future__ import annotations

import dataclasses
import io
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from evicctl.manager.description import ManagerDescription
from evicctl.telemetry import TelemetryReader, disk_folder, read_disk, read_host
from evicctl.tui import render


class NVMLError(Exception):
    pass


class FakeNVML:
    """The slice of pynvml the reader uses; `broken` names calls that raise."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int = 1, broken: tuple[str, ...] = (), init_error: str | None = None):
        self.count, self.broken, self.init_error = count, set(broken), init_error
        self.shutdowns = 0

    def _call(self, name: str, value):
        if name in self.broken:
            raise NVMLError(f"{name}: Not Supported")
        return value

    def nvmlInit(self):
        if self.init_error:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return self._call("count", self.count)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self._call("handle", f"h{i}")

    def nvmlDeviceGetName(self, h):
        return self._call("name", b"NVIDIA H200")

    def nvmlDeviceGetMemoryInfo(self, h):
        return self._call("memory", SimpleNamespace(used=10 << 30, total=141 << 30))

    def nvmlDeviceGetUtilizationRates(self, h):
        return self._call("util", SimpleNamespace(gpu=55, memory=20))

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self._call("temperature", 41)

    def nvmlDeviceGetPowerUsage(self, h):
        return self._call("power", 250_500)  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._call("limit", 700_000)


def test_reads_every_gpu_field(tmp_path):
    nvml = FakeNVML(count=2)
    tel = TelemetryReader(tmp_path, nvml=nvml, clock=lambda: 123.0).read()
    assert tel.taken_at == 123.0 and tel.gpu_status is None
    assert [g.index for g in tel.gpus] == [0, 1]
    gpu = tel.gpus[0]
    assert (gpu.name, gpu.memory_used_bytes, gpu.memory_total_bytes) == ("NVIDIA H200", 10 << 30, 141 << 30)
    assert (gpu.utilization_pct, gpu.temperature_c, gpu.power_w, gpu.power_limit_w) == (55.0, 41.0, 250.5, 700.0)


@pytest.mark.parametrize("field,attrs", [
    ("memory", ("memory_used_bytes", "memory_total_bytes")),
    ("util", ("utilization_pct",)),
    ("temperature", ("temperature_c",)),
    ("power", ("power_w",)),
    ("limit", ("power_limit_w",)),
    ("name", ("name",)),
])
def test_one_unreadable_field_is_na_and_the_rest_stay(field, attrs, tmp_path):
    tel = TelemetryReader(tmp_path, nvml=FakeNVML(broken=(field,))).read()
    for name, value in dataclasses.asdict(tel.gpus[0]).items():
        if name in attrs:
            assert value is None, name
        else:
            assert value is not None, name
    console = Console(width=100, file=io.StringIO())
    console.print(render.telemetry_table(tel))
    text = console.file.getvalue()
    if field == "limit":  # an unknown cap: the power alone
        assert "250 W" in text and "/700" not in text
    else:
        assert "N/A" in text


def test_no_driver_is_no_gpu_and_init_is_tried_once(tmp_path):
    nvml = FakeNVML(init_error="Driver Not Loaded")
    calls = []
    original = nvml.nvmlInit
    nvml.nvmlInit = lambda: calls.append(1) or original()
    reader = TelemetryReader(tmp_path, nvml=nvml)
    first, second = reader.read(), reader.read()
    assert first.gpus == () and first.gpu_status == "no GPU (NVIDIA driver not loaded)"
    assert second.gpu_status == first.gpu_status and len(calls) == 1
    assert first.host.memory_total_bytes and first.disk is not None


def test_no_devices_and_uncountable_devices(tmp_path):
    assert TelemetryReader(tmp_path, nvml=FakeNVML(count=0)).read().gpu_status == "no GPU (NVML found no devices)"
    status = TelemetryReader(tmp_path, nvml=FakeNVML(broken=("count",))).read().gpu_status
    assert status.startswith("no GPU")


def test_a_lost_handle_gives_an_all_na_gpu(tmp_path):
    gpu = TelemetryReader(tmp_path, nvml=FakeNVML(broken=("handle",))).read().gpus[0]
    assert gpu.index == 0 and gpu.name is None and gpu.memory_total_bytes is None


def test_real_reader_on_this_machine_never_raises(tmp_path):
    reader = TelemetryReader(tmp_path / "not" / "yet" / "created")
    tel = reader.read()
    reader.close()
    assert tel.gpus or (tel.gpu_status or "").startswith("no GPU")
    assert tel.host.memory_total_bytes and tel.host.memory_total_bytes > 0
    # a cache dir that does not exist yet is measured on its nearest existing parent
    assert tel.disk is not None and tel.disk.total_bytes and tel.disk.path.endswith("created")


def test_reads_from_many_threads_at_once(tmp_path):
    reader = TelemetryReader(tmp_path, nvml=FakeNVML(count=4))
    results, errors = [], []

    def work():
        try:
            results.append(len(reader.read().gpus))
        except Exception as exc:  # the point of the test: there must be none
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [4] * 8


def test_close_shuts_nvml_down_once(tmp_path):
    nvml = FakeNVML()
    reader = TelemetryReader(tmp_path, nvml=nvml)
    reader.read()
    reader.close()
    reader.close()
    assert nvml.shutdowns == 1


def test_host_and_disk_helpers(tmp_path):
    host = read_host()
    assert host.memory_used_bytes is not None and host.memory_used_bytes <= host.memory_total_bytes
    disk = read_disk(tmp_path)
    assert disk.used_bytes is not None and disk.free_bytes is not None
    assert disk.used_bytes + disk.free_bytes <= disk.total_bytes


def test_disk_folder_comes_from_the_manager_description(tmp_path):
    """Precedence only; tests/manager/test_manager_pricing.py checks the folder a real manager writes."""
    described = ManagerDescription(disk_dir=str(tmp_path / "disk" / "abc"), cache_dir=str(tmp_path))
    assert disk_folder(ManagerDescription.from_json(described.to_json())) == tmp_path / "disk" / "abc"
    assert disk_folder(ManagerDescription(cache_dir="/srv/kv")) == Path("/srv/kv")  # no disk tier
    assert disk_folder(None).name == "evicctl"  # no manager yet: the default cache folder
