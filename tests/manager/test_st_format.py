"""The safetensors layout helpers every tier uses: against the safetensors library's own files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from evicctl.errors import CorruptDataError
from evicctl.manager.tiers import st_format


def _file() -> tuple[bytes, dict[str, torch.Tensor]]:
    tensors = {"k": torch.randn(2, 3, 5), "v": torch.arange(7, dtype=torch.int16), "b": torch.ones(3, dtype=torch.bfloat16)}
    return save(tensors, {"context_id": "x"}), tensors


def test_views_match_what_the_library_wrote():
    data, tensors = _file()
    header, base = st_format.split(data)
    specs, meta = st_format.parse_header(header)
    assert meta == {"context_id": "x"}
    views = st_format.tensor_views(torch.frombuffer(bytearray(data), dtype=torch.uint8), specs, base)
    assert set(views) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(views[name], t) and views[name].dtype == t.dtype
    assert st_format.payload_nbytes(header) == len(data) - base


@pytest.mark.parametrize("cut", [0, 3, 8, 20])
def test_truncated_files_are_corrupt_not_crashes(cut):
    data, _ = _file()
    with pytest.raises(CorruptDataError):
        header, base = st_format.split(data[:cut])
        st_format.tensor_views(torch.frombuffer(bytearray(data[:cut]) or bytearray(1), dtype=torch.uint8),
                               st_format.parse_header(header)[0], base)


def test_a_header_length_past_the_end_and_garbage_json_are_corrupt():
    data, _ = _file()
    with pytest.raises(CorruptDataError, match="past its end"):
        st_format.header_len((10**9).to_bytes(8, "little"), total_bytes=len(data))
    with pytest.raises(CorruptDataError):
        st_format.parse_header(b"{not json")
    with pytest.raises(CorruptDataError):
        st_format.payload_nbytes(b'{"k": {"dtype": "F32"}}')
