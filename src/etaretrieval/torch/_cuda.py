"""CUDA kernels of the ``torch.ops.etaretrieval`` operators.

Each kernel validates with the same ``check_*`` function as the CPU kernel,
allocates its outputs with torch on the inputs' device and launches the
numba-cuda kernels of :mod:`etaretrieval.cuda` (which own the device side:
front padding, the value checks) on torch's current stream
(``torch.cuda.current_stream().cuda_stream``), reading the tensors through
``__cuda_array_interface__`` without copies. Registering needs neither a GPU
nor numba-cuda: ``etaretrieval.cuda`` only imports ``numba.cuda`` on first
launch.
"""

from __future__ import annotations

from typing import Optional, cast

import numpy as np
import torch

from .._device import DeviceArray, describe
from .._validate import NonFiniteError, results_error
from . import _ops

__all__ = ["register"]


def _stream(t: torch.Tensor) -> int:
    return int(torch.cuda.current_stream(t.device).cuda_stream)


def _bits(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` detached (``__cuda_array_interface__`` refuses tensors that require grad)."""
    return None if t is None else t.detach()


def _pack_cuda(
    x: torch.Tensor, planes: torch.Tensor, check_finite: bool = True, valid: Optional[torch.Tensor] = None,
    offset: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    from .. import cuda

    out = torch.empty(_ops.check_pack(x, planes, valid, offset), dtype=torch.int64, device=x.device)
    if out.numel():
        xs = _ops.as_float32(x).detach()
        with torch.cuda.device(x.device):
            try:
                cuda.pack_signatures_into(xs, planes.detach(), out, check_finite=check_finite, stream=_stream(out),
                                          offset=_bits(offset))
            except NonFiniteError:  # out is written either way: only a valid non-finite row is an error
                if valid is None:
                    raise
                _ops.check_finite_where(xs, valid)
    return out


def _outputs(query: torch.Tensor, batch: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        idx = torch.empty((batch, k), dtype=torch.int64, device=query.device)
        return idx, torch.empty((batch, k), dtype=torch.int32, device=query.device)
    except RuntimeError:  # out of memory (torch.OutOfMemoryError) or a size torch cannot represent
        raise results_error(batch, k) from None


def _topk_cuda(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    from .. import cuda

    idx, dist = _outputs(query, _ops.check_topk(query, keys, k, lengths, mask, padding_side), k)
    with torch.cuda.device(query.device):
        cuda.topk_hamming_into(
            query.detach(), keys.detach(), k, idx, dist, lengths=_bits(lengths), mask=_bits(_ops.bool_mask(mask)),
            padding_side=padding_side, stream=_stream(idx),
        )
    return idx, dist


def _lookup_cuda(
    query: torch.Tensor,
    ids: torch.Tensor,
    table: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_id: Optional[int] = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    from .. import cuda

    idx, dist = _outputs(query, _ops.check_lookup(query, ids, table, k, lengths, mask, padding_side), k)
    pad = _ops.padding_bits(padding_id, ids.dtype)
    with torch.cuda.device(query.device):
        cuda.topk_hamming_lookup_into(
            query.detach(), ids.detach(), table.detach(), k, idx, dist, lengths=_bits(lengths),
            mask=_bits(_ops.bool_mask(mask)), padding_id=pad, padding_side=padding_side, stream=_stream(idx),
        )
    return idx, dist


def _device(t: torch.Tensor) -> DeviceArray:
    """The description of a CUDA tensor for :mod:`etaretrieval.cuda` (no copy)."""
    return cast(DeviceArray, describe(t.detach()))


def _ragged(
    query: torch.Tensor, offsets: torch.Tensor, batch: int, total: int, values: str, mask: Optional[torch.Tensor]
) -> tuple[DeviceArray, np.ndarray, np.ndarray, Optional[DeviceArray]]:
    """``(query, starts, lens, mask)`` for :mod:`etaretrieval.cuda.ragged`: offsets checked on the host.

    The ``B + 1`` offsets are read back by torch, in order on the current
    stream (the launch plan cuts rows into tiles on the host); the other
    tensors are described, not copied.
    """
    from ..ragged import as_offsets

    starts, lens = as_offsets(offsets.detach().cpu().numpy(), batch, total, values)
    m = _ops.bool_mask(mask)
    return _device(query), starts, lens, None if m is None else _device(m)


def _topk_ragged_cuda(
    query: torch.Tensor, keys: torch.Tensor, k: int, offsets: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    from ..cuda import ragged

    batch = _ops.check_topk_ragged(query, keys, k, offsets, mask)
    with torch.cuda.device(query.device):  # launched on torch's current stream (cuda._backend.launch_stream)
        q, starts, lens, m = _ragged(query, offsets, batch, keys.shape[0], "keys", mask)
        return cast(tuple[torch.Tensor, torch.Tensor], ragged.topk_hamming(q, _device(keys), k, starts, lens, m))


def _lookup_ragged_cuda(
    query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, k: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None, padding_id: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    from ..cuda import ragged

    batch = _ops.check_lookup_ragged(query, ids, table, k, offsets, mask)
    pad = _ops.padding_bits(padding_id, ids.dtype)
    with torch.cuda.device(query.device):
        q, starts, lens, m = _ragged(query, offsets, batch, ids.shape[0], "ids", mask)
        out = ragged.topk_hamming_lookup(q, _device(ids), _device(table), k, starts, lens, m, pad)
    return cast(tuple[torch.Tensor, torch.Tensor], out)


_KERNELS = {
    "pack_signatures": _pack_cuda,
    "topk_hamming": _topk_cuda,
    "topk_hamming_lookup": _lookup_cuda,
    "topk_hamming_ragged": _topk_ragged_cuda,
    "topk_hamming_lookup_ragged": _lookup_ragged_cuda,
}


def register() -> None:
    """Register the CUDA kernels of the operators (registering again replaces them)."""
    for name, fn in _KERNELS.items():
        torch.library.register_kernel(f"etaretrieval::{name}", "cuda", fn)
