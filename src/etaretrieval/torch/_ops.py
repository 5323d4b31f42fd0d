"""The ``torch.ops.etaretrieval`` custom operators.

Each op is defined with :class:`torch.library.Library` (schema inferred from
the Python signature, no mutated arguments; opaque to ``torch.compile``) with
a fake kernel that checks shapes, dtypes and devices and allocates the
outputs. Unlike :func:`torch.library.custom_op`, whose Python autograd wrapper
costs every call and imports ``torch._dynamo`` on the first call of a process,
the kernel is registered with the dispatcher directly; the outputs are integer
tensors, so no autograd formula is needed. The default kernel checks the
tensors (torch's dtypes in the messages), builds the
:class:`~etaretrieval._validate.TopkCall` of zero-copy numpy views (any
strides; int64 signature tensors are reinterpreted as uint64, never
converted) and hands it to the CPU driver, whose errors are the NumPy API's;
the common lookup takes the driver's fast path first. Other devices get a
clear error. The CUDA kernels (:mod:`._cuda`) are added with
``torch.library.register_kernel("etaretrieval::<op>", "cuda", fn)`` and call
the same ``check_*`` functions first, so every device rejects the same inputs
with the same messages.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, cast

import numpy as np
import torch

from .. import config, ragged
from .._validate import (
    MAX_WORDS,
    DTypeError,
    NonFiniteError,
    TopkCall,
    _as_int,
    _shape,
    as_padding,
    check_either,
    check_ids_shape,
    check_k,
    check_keys_shape,
    check_lengths_shape,
    check_mask_shape,
    check_padding_side,
    check_planes_finite,
    check_signature_ndim,
    check_table_shape,
    check_x_shape,
    valid_nonfinite_error,
)
from ..cpu import ragged as cpu_ragged
from ..cpu import topk as cpu_topk
from ..cpu.pack import pack_projection, raise_nonfinite, thresholds
from ..cpu.pack import pack_signatures as host_pack
from ..simhash import check_offset_finite, check_offset_shape

__all__ = [
    "pack_signatures",
    "topk_hamming",
    "topk_hamming_lookup",
    "topk_hamming_ragged",
    "topk_hamming_lookup_ragged",
    "check_pack",
    "check_topk",
    "check_lookup",
    "check_topk_ragged",
    "check_lookup_ragged",
    "check_ragged",
    "ragged_rows",
    "is_integer",
    "bool_mask",
    "as_float32",
    "check_finite_where",
]

_FLOATS = (torch.float32, torch.float64)
#: Embeddings of these dtypes are projected in float32 (the planes stay as they are).
_HALF = (torch.float16, torch.bfloat16)

# The CUDA kernels read their error cells back to the host (a stream sync), which
# CUDA-graph capture forbids: the tag keeps the ops out of graphs
# (torch.compile(mode="reduce-overhead")) where this torch knows it.
_TAGS = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()
#: The same tags as keyword arguments of ``torch.library.custom_op`` (ops with an autograd formula, see .sdim).
_CUSTOM_OP_TAGS = {"tags": _TAGS} if _TAGS and "tags" in inspect.signature(torch.library.custom_op).parameters else {}

_LIB = torch.library.Library("etaretrieval", "FRAGMENT")  # kept for the life of the process

_NESTED: Optional[type]
try:  # the class of torch.jagged nested tensors (a private module; without it, they take the general path)
    from torch.nested._internal.nested_tensor import NestedTensor as _NESTED
except ImportError:  # pragma: no cover - torch without it
    _NESTED = None

if hasattr(torch.library, "infer_schema"):
    _infer_schema = torch.library.infer_schema
else:  # torch 2.4
    from torch._library.infer_schema import infer_schema as _infer_schema


def _on(name: str, t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """``t``, checked to be on ``device`` (the dispatcher has already checked it is a tensor)."""
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on the device of the other inputs ({device}), got {name} on {t.device}")
    return t


def is_integer(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is an integer dtype (bool is not)."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _signatures(
    name: str, t: torch.Tensor, ndims: tuple[int, ...], what: str, device: torch.device | None
) -> torch.Tensor:
    _required(**{name: t})
    s = _on(name, t, device)
    if s.dtype != torch.int64:
        raise DTypeError(
            f"{name} must hold packed signatures as dtype torch.int64 (uint64 bit patterns), got {s.dtype}"
        )
    check_signature_ndim(name, tuple(s.shape), ndims, what)
    if not 1 <= s.shape[-1] <= MAX_WORDS:
        raise ValueError(
            f"{name} must have 1..{MAX_WORDS} signature words in its last axis, got shape {_shape(tuple(s.shape))}"
        )
    return s


def _check_k(k: int) -> None:
    check_k(k)


def bool_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A checked ``mask`` as bool: numeric masks (attention-mask convention) are valid where non-zero."""
    return mask if mask is None or mask.dtype == torch.bool else mask != 0


def _check_validity(
    lengths: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    batch: int,
    length: int,
    device: torch.device,
    padding_side: str = "right",
) -> None:
    check_padding_side(padding_side)
    check_either(lengths, mask)
    if lengths is not None:
        _on("lengths", lengths, device)
        if not is_integer(lengths.dtype):
            raise DTypeError(f"lengths must have an integer dtype, got {lengths.dtype}")
        check_lengths_shape(tuple(lengths.shape), batch)
    if mask is not None:
        _on("mask", mask, device)
        if mask.dtype.is_complex:
            raise DTypeError(
                f"mask must have dtype torch.bool or a real numeric dtype (non-zero = valid), got {mask.dtype}"
            )
        check_mask_shape(tuple(mask.shape), batch, length)


def check_pack(
    x: torch.Tensor, planes: torch.Tensor, valid: Optional[torch.Tensor] = None, offset: Optional[torch.Tensor] = None
) -> tuple[int, ...]:
    """Check the inputs of ``pack_signatures`` (not the values of ``offset``); return the output shape ``(..., W)``."""
    _required(x=x, planes=planes)  # the dispatcher lets None through for a tensor argument
    p = planes
    _on("x", x, p.device)
    if p.dtype not in _FLOATS:
        raise DTypeError(f"planes must have dtype torch.float32 or torch.float64, got {p.dtype}")
    if x.dtype not in _FLOATS + _HALF:
        raise DTypeError(
            f"x must have dtype torch.float32 or torch.float64 (or float16 / bfloat16, projected in float32), "
            f"got {x.dtype}"
        )
    if p.dim() != 2 or p.shape[0] < 1 or not 1 <= p.shape[1] <= 64 * MAX_WORDS:
        raise ValueError(
            f"planes must have shape (dim, bits) with 1 <= bits <= {64 * MAX_WORDS}, got shape {_shape(tuple(p.shape))}"
        )
    check_x_shape(tuple(x.shape), tuple(p.shape))
    if valid is not None:
        _on("valid", valid, p.device)
        if valid.dtype != torch.bool or tuple(valid.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"valid must be a bool tensor of shape {_shape(tuple(x.shape[:-1]))} (the rows of x), "
                f"got {valid.dtype} of shape {_shape(tuple(valid.shape))}"
            )
    if offset is not None:
        _on("offset", offset, p.device)
        if offset.dtype not in _FLOATS:
            raise DTypeError(f"offset must have dtype torch.float32 or torch.float64, got {offset.dtype}")
        check_offset_shape(tuple(offset.shape), tuple(p.shape))
    return (*x.shape[:-1], (p.shape[1] + 63) // 64)


def check_topk(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    padding_side: str = "right",
) -> int:
    """Check the inputs of ``topk_hamming``; return the batch size ``B``."""
    q = _signatures("query", query, (2,), "(B, W)", None)
    kk = _signatures("keys", keys, (2, 3), "(B, L, W) or (L, W)", q.device)
    batch, words = q.shape
    check_keys_shape(tuple(kk.shape), batch, words)
    _check_k(k)
    _check_validity(lengths, mask, batch, kk.shape[-2], q.device, padding_side)
    return batch


def check_lookup(
    query: torch.Tensor,
    ids: torch.Tensor,
    table: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    padding_side: str = "right",
) -> int:
    """Check the inputs of ``topk_hamming_lookup``; return the batch size ``B``."""
    q = _signatures("query", query, (2,), "(B, W)", None)
    t = _signatures("table", table, (2,), "(N, W)", q.device)
    i = _on("ids", ids, q.device)
    batch, words = q.shape
    check_table_shape(tuple(t.shape), words)
    if not is_integer(i.dtype):
        raise DTypeError(f"ids must have an integer dtype, got {i.dtype}")
    check_ids_shape(tuple(i.shape), batch)
    _check_k(k)
    _check_validity(lengths, mask, batch, i.shape[-1], q.device, padding_side)
    return batch


def as_float32(x: torch.Tensor) -> torch.Tensor:
    """``x``, or a float32 copy of float16 / bfloat16 embeddings (the projection runs in float32)."""
    return x.detach().to(torch.float32) if x.dtype in _HALF else x


def check_finite_where(x: torch.Tensor, valid: torch.Tensor) -> None:
    """Raise naming the first row of ``x`` (``(..., dim)``) that ``valid`` marks and that holds a NaN or inf.

    A row holding a NaN or an inf has a non-finite sum; so do the few finite
    rows whose sum overflows, which the exact check of the suspects clears.
    """
    suspect = valid & ~torch.isfinite(x.sum(dim=-1))
    if bool(suspect.any()):
        bad = ~torch.isfinite(x[suspect]).all(dim=-1)
        if bool(bad.any()):
            first = int(suspect.reshape(-1).nonzero()[int(bad.nonzero()[0, 0]), 0])
            raise valid_nonfinite_error(np.unravel_index(first, tuple(suspect.shape)))


def _numpy(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    """A zero-copy numpy view of a CPU tensor (any strides), or None."""
    return None if t is None else _array(t)


def _array(t: torch.Tensor) -> np.ndarray:
    """A zero-copy numpy view of a CPU tensor (any strides)."""
    return (t.detach() if t.requires_grad else t).numpy()  # detach() only when needed: it costs every call


def _uint64(t: torch.Tensor) -> np.ndarray:
    """The uint64 bit patterns of an int64 signature tensor, without a copy."""
    return t.numpy().view(np.uint64)  # integer tensors never require grad


def padding_bits(padding_id: Optional[int], ids_dtype: torch.dtype) -> Optional[int]:
    """``padding_id`` checked against the ids' dtype, as the int64 bit pattern of ids cast to int64 (or None)."""
    return as_padding(padding_id, np.dtype(str(ids_dtype).removeprefix("torch.")))


def _require_cpu(op: str, t: torch.Tensor) -> None:
    if t.device.type != "cpu":
        raise ValueError(
            f"etaretrieval::{op} has no kernel for device {t.device}: move the inputs to the CPU, "
            "or import the backend that registers one for this device"
        )


def _results(idx: np.ndarray, dist: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(idx), torch.from_numpy(dist)


def _define(name: str, fake: Callable[..., object]) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Register ``fn`` as ``etaretrieval::<name>`` with its fake kernel, once per process.

    Returns a function calling the op's ``default`` overload. Importing this
    module again (``importlib.reload``, a second import path, the doctests)
    finds the op already in the dispatcher and wraps the registered one
    instead of failing: every import gets the same kind of function (never the
    overload packet, which ``torch.compile`` cannot trace as a plain call).
    """

    def register(fn: Callable[..., object]) -> Callable[..., object]:
        if not hasattr(torch.ops.etaretrieval, name):
            _LIB.define(name + _infer_schema(fn, mutates_args=()), tags=_TAGS)
            _LIB.impl(name, fn, "CompositeExplicitAutograd")  # every device (CUDA: its own kernel, see _cuda)
            _LIB.impl(name, fn, "Meta")  # a meta tensor is a device without a kernel: fn says so, as elsewhere
            torch.library.register_fake(f"etaretrieval::{name}", fake, lib=_LIB)
        op = getattr(torch.ops.etaretrieval, name).default

        @functools.wraps(fn)
        def call(*args: object, **kwargs: object) -> object:
            return op(*args, **kwargs)

        return call

    return register


def _pack_fake(
    x: torch.Tensor, planes: torch.Tensor, check_finite: bool = True, valid: Optional[torch.Tensor] = None,
    offset: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return x.new_empty(check_pack(x, planes, valid, offset), dtype=torch.int64)


@_define("pack_signatures", _pack_fake)
def _pack_op(
    x: torch.Tensor, planes: torch.Tensor, check_finite: bool = True, valid: Optional[torch.Tensor] = None,
    offset: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``etaretrieval::pack_signatures`` (see :func:`pack_signatures`)."""
    check_pack(x, planes, valid, offset)
    _require_cpu("pack_signatures", x)
    xs = as_float32(x)
    try:
        return _pack_cpu(xs, planes, check_finite, offset)
    except NonFiniteError:
        if valid is None:
            raise
        check_finite_where(xs, valid)  # the non-finite rows are all invalid ones: hash them anyway
        return _pack_cpu(xs, planes, False, offset)


def pack_signatures(
    x: torch.Tensor, planes: torch.Tensor, check_finite: bool = True, valid: Optional[torch.Tensor] = None, *,
    offset: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SimHash signatures of ``x`` as int64 tensors (see :func:`etaretrieval.pack_signatures`).

    Parameters
    ----------
    x : torch.Tensor
        ``(..., dim)`` float32/float64 embeddings; any strides, not copied.
        float16 / bfloat16 embeddings are copied to float32 and projected there.
    planes : torch.Tensor
        ``(dim, bits)`` float32/float64 hyperplanes.
    check_finite : bool, default True
        Raise :class:`ValueError` naming the first row holding a NaN or an infinity.
    valid : torch.Tensor, optional
        ``x.shape[:-1]`` bool: the rows that will be used (e.g. the unmasked
        positions of a padded sequence). Only these are checked for
        non-finite values; every row is hashed.
    offset : torch.Tensor, optional
        ``(bits,)`` float32/float64 finite values added to the projections
        (bit ``j`` is ``x @ planes[:, j] + offset[j] > 0``), rounded to the
        projection's dtype and added after the sum over ``dim``: hashing
        ``[x, 1]`` with planes ``[planes; offset]`` without the wider copy
        of ``x`` (see :func:`etaretrieval.pack_signatures`). Checked to be
        finite on the CPU (like ``planes``), not on a GPU. The op's schema
        takes it as a fifth argument.

    Returns
    -------
    torch.Tensor
        ``(..., W)`` int64 holding the uint64 signature words.

    Examples
    --------
    >>> import torch, etaretrieval.torch
    >>> planes = torch.tensor([[1.0, -1.0, 0.0]])  # dim 1, 3 bits
    >>> torch.ops.etaretrieval.pack_signatures(torch.tensor([[2.0], [-1.0], [0.0]]), planes).ravel()
    tensor([1, 2, 0])
    >>> etaretrieval.torch.pack_signatures(torch.tensor([[2.0], [-1.0], [0.0]]), planes,
    ...                                    offset=torch.tensor([-1.0, 0.0, 0.5])).ravel()
    tensor([5, 6, 4])
    """
    _required(x=x, planes=planes)
    _tensors(x=x, planes=planes, valid=valid, offset=offset)
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
    return cast(torch.Tensor, _pack_op(x, planes, check_finite, valid, offset))


def _pack_cpu(
    x: torch.Tensor, planes: torch.Tensor, check_finite: bool, offset: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The CPU kernel of ``pack_signatures`` on checked float32/float64 inputs.

    Request-sized inputs go through the NumPy API's host driver (its Numba
    projection), table-sized ones through :func:`_pack_large` (``torch.matmul``).
    """
    if offset is not None:
        check_offset_finite(bool(torch.isfinite(offset).all()))
    if x.numel() * planes.shape[1] <= config.PACK_BLAS_WORK:
        p = _array(planes)
        check_planes_finite(p)
        shift = None if offset is None else _array(offset)
        return torch.from_numpy(host_pack(_array(x), p, check_finite, shift).view(np.int64))
    return _pack_large(x.detach(), planes.detach(), check_finite, offset).view(*x.shape[:-1], -1)


def _pack_large(
    x: torch.Tensor, planes: torch.Tensor, check_finite: bool, offset: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Table-sized packing: ``torch.matmul`` per row chunk, then the sign kernel (``offset`` as its threshold).

    The matmul runs on torch's own threads, not NumPy's BLAS.
    """
    x2 = x.reshape(-1, x.shape[-1])
    ctype = torch.promote_types(x2.dtype, planes.dtype)
    p = planes.to(ctype)
    rows, bits = x2.shape[0], p.shape[1]
    out = np.empty((rows, (bits + 63) // 64), dtype=np.uint64)
    chunk = max(1, config.PACK_CHUNK_ELEMENTS // bits)
    proj = torch.empty((min(chunk, rows), bits), dtype=ctype)
    flags = np.empty(proj.shape[0], dtype=np.bool_)
    limit = thresholds(None if offset is None else _array(offset), bits, proj.numpy().dtype)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        block = x2[start : start + n].to(ctype)
        torch.matmul(block, p, out=proj[:n])
        pack_projection(proj[:n].numpy(), out[start : start + n], flags[:n], limit)
        if check_finite and flags[:n].any():
            raise_nonfinite(block.numpy(), np.flatnonzero(flags[:n]), start, tuple(x.shape[:-1]))
    return torch.from_numpy(out.view(np.int64))


def _topk_fake(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = check_topk(query, keys, k, lengths, mask, padding_side)
    return query.new_empty((batch, k)), query.new_empty((batch, k), dtype=torch.int32)


@_define("topk_hamming", _topk_fake)
def _topk_padded(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``etaretrieval::topk_hamming``: padded rows (see :func:`topk_hamming`)."""
    check_topk(query, keys, k, lengths, mask, padding_side)
    _require_cpu("topk_hamming", query)
    call = TopkCall(_uint64(query), _uint64(keys), None, None, k, _numpy(lengths), _numpy(bool_mask(mask)), None,
                    padding_side == "left")
    return _results(*cpu_topk.run(call))


#: Id (and offset) dtypes of the small-call fast path, and their NumPy dtypes.
_FAST_IDS: dict[torch.dtype, np.dtype] = {torch.int64: np.dtype(np.int64), torch.int32: np.dtype(np.int32)}


def _memory(t: torch.Tensor, dtype: torch.dtype, flat: bool = False) -> Optional[tuple[int, int, int]]:
    """``(address, rows, columns)`` of a plain C-contiguous 2-D CPU tensor of ``dtype``, or None.

    With ``flat``, of a 1-D tensor of ``n`` elements instead, as one row: ``(address, 1, n)``.

    Plain: exactly a ``torch.Tensor`` (no subclass), dense, without a
    negative bit (whose values are not the memory's) and with storage (an
    efficient zero tensor has none: address 0). The tensors without strides
    or sizes (sparse compressed, nested) raise in ``is_contiguous()`` or
    ``shape``, as do those without storage in ``data_ptr()``; sparse COO
    ones are not contiguous.
    """
    try:
        if not (type(t) is torch.Tensor and t.dtype is dtype and t.is_cpu and t.is_contiguous() and not t.is_neg()):
            return None
        address, shape = t.data_ptr(), t.shape
    except RuntimeError:
        return None
    if not address:
        return None
    if flat:
        return (address, 1, shape[0]) if len(shape) == 1 else None
    return (address, shape[0], shape[1]) if len(shape) == 2 else None


def _small_lookup(
    query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, k: int, offsets: Optional[torch.Tensor] = None
) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The CPU driver's small-call fast path (:func:`~etaretrieval.cpu.topk.lookup_at`) on the tensors' memory, or None.

    Plain C-contiguous CPU tensors (:func:`_memory`): int64 signatures, and
    ``(B, L)`` int64/int32 ids, or flat ``(T,)`` ones with ``(B + 1,)``
    int64/int32 ``offsets``; no validity arguments (the caller's guard). Any
    other call, or one the entry declines (a bad shape, offset or id),
    returns None and the general path runs (and raises).
    """
    ids_dtype = _FAST_IDS.get(ids.dtype) if type(ids) is torch.Tensor else None
    if ids_dtype is None:
        return None
    flat = offsets is not None
    q, i, t = _memory(query, torch.int64), _memory(ids, ids.dtype, flat), _memory(table, torch.int64)
    if q is None or i is None or t is None:
        return None
    if offsets is None:
        fast = cpu_topk.lookup_at(q, i, ids_dtype, t, k)
    else:
        offsets_dtype = _FAST_IDS.get(offsets.dtype) if type(offsets) is torch.Tensor else None
        o = None if offsets_dtype is None else _memory(offsets, offsets.dtype, flat)
        if o is None or offsets_dtype is None:
            return None
        fast = cpu_topk.lookup_at(q, i, ids_dtype, t, k, (o[0], o[2], offsets_dtype))
    return None if fast is None else (torch.from_numpy(fast[0]), torch.from_numpy(fast[1]))


def _jagged_parts(t: object) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(values, offsets)`` of a ``torch.jagged`` nested tensor without holes, read from its fields; else None.

    Eager front ends only (:func:`_bypass_allowed`): any attribute or method
    of a nested tensor (``is_nested``, ``values()``) runs through its
    ``__torch_function__``, tens of microseconds each; its fields are the
    same tensors, read directly. The ragged dimension must be the second.
    """
    if _NESTED is None or type(t) is not _NESTED:
        return None
    nested: Any = t
    if nested._lengths is not None or nested._ragged_idx != 1:
        return None
    return nested._values, nested._offsets


def _bypass_allowed() -> bool:
    """Whether a front end may run a kernel itself rather than call the op through the dispatcher.

    Only in eager mode with nothing that would see, trace or transform the
    op call: not compiling or exporting, no torch dispatch mode (fake
    tensors, functionalization, tracing), no torch function mode, no
    ``torch.func`` transform (vmap, grad, functionalize) and no profiler
    recording ops. The caller also takes plain CPU tensors only (:func:`_memory`).
    """
    return not (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
                or torch._C._is_torch_function_mode_enabled()
                or torch._C._functorch.peek_interpreter_stack() is not None
                or torch._C._autograd._profiler_enabled())


def _lookup_fake(
    query: torch.Tensor,
    ids: torch.Tensor,
    table: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_id: Optional[int] = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = check_lookup(query, ids, table, k, lengths, mask, padding_side)
    return query.new_empty((batch, k)), query.new_empty((batch, k), dtype=torch.int32)


@_define("topk_hamming_lookup", _lookup_fake)
def _lookup_padded(
    query: torch.Tensor,
    ids: torch.Tensor,
    table: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_id: Optional[int] = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``etaretrieval::topk_hamming_lookup``: padded rows (see :func:`topk_hamming_lookup`)."""
    if lengths is None and mask is None and padding_id is None and padding_side == "right":
        fast = _small_lookup(query, ids, table, k)
        if fast is not None:
            return fast
    check_lookup(query, ids, table, k, lengths, mask, padding_side)
    _require_cpu("topk_hamming_lookup", query)
    i = _array(ids)
    call = TopkCall(_uint64(query), None, i, _uint64(table), k, _numpy(lengths), _numpy(bool_mask(mask)),
                    as_padding(padding_id, i.dtype), padding_side == "left")
    return _results(*cpu_topk.run(call))


def check_ragged(
    offsets: torch.Tensor, mask: Optional[torch.Tensor], batch: int, total: int, device: torch.device
) -> None:
    """Check ``offsets`` ``(batch + 1,)`` and a flat ``(total,)`` ``mask`` (their values: in the kernels)."""
    _on("offsets", offsets, device)
    if not is_integer(offsets.dtype):
        raise DTypeError(f"offsets must have an integer dtype (int32 or int64), got {offsets.dtype}")
    if tuple(offsets.shape) != (batch + 1,):
        raise ValueError(
            f"offsets must have shape {_shape((batch + 1,))} (one more than the {batch} rows of query), "
            f"got shape {_shape(tuple(offsets.shape))}"
        )
    if mask is not None:
        _on("mask", mask, device)
        if mask.dtype.is_complex:
            raise DTypeError(
                f"mask must have dtype torch.bool or a real numeric dtype (non-zero = valid), got {mask.dtype}"
            )
        if tuple(mask.shape) != (total,):
            raise ValueError(
                f"mask must have shape {_shape((total,))} (one entry per flat value, like the values offsets "
                f"index), got shape {_shape(tuple(mask.shape))}"
            )


def row_index(offsets: torch.Tensor, total: int) -> torch.Tensor:
    """``(T,)`` int64 row of each of ``total`` flat values; ``B`` for a value of no row.

    A value of no row lies before ``offsets[0]`` or past ``offsets[-1]``.
    ``O(T + B)`` torch operations on the offsets' device (a count of the rows
    begun at each value, summed; no read-back); the offsets are assumed valid.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._ops import row_index
    >>> row_index(torch.tensor([1, 3, 3, 4]), 6).tolist()
    [3, 0, 0, 2, 3, 3]
    """
    o = offsets.to(torch.int64).clamp(0, total)  # (valid offsets are unchanged)
    starts = torch.zeros(total + 1, dtype=torch.int64, device=o.device).index_add(0, o, torch.ones_like(o))
    rows = starts[:total].cumsum(0) - 1  # the number of rows begun at or before each value, less one
    return torch.where(rows < 0, o.shape[0] - 1, rows)  # before offsets[0]: no row (past offsets[-1]: B already)


def ragged_rows(offsets: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(o, seg, pos)`` of ragged rows over ``total`` flat values: int64 offsets, each value's row and position.

    ``seg`` is :func:`row_index`; ``pos`` counts from the row's start. The
    offsets are assumed valid.
    """
    o = offsets.to(torch.int64)
    seg = row_index(o, total)
    return o, seg, torch.arange(total, device=o.device) - o[seg]


def check_topk_ragged(
    query: torch.Tensor, keys: torch.Tensor, k: int, offsets: torch.Tensor, mask: Optional[torch.Tensor]
) -> int:
    """Check the inputs of ``topk_hamming_ragged``; return the batch size ``B``."""
    q = _signatures("query", query, (2,), "(B, W)", None)
    kk = _signatures("keys", keys, (2,), "(T, W): the flat keys of every row", q.device)
    batch, words = q.shape
    check_keys_shape(tuple(kk.shape), batch, words)
    _check_k(k)
    check_ragged(offsets, mask, batch, kk.shape[0], q.device)
    return batch


def check_lookup_ragged(
    query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, k: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor],
) -> int:
    """Check the inputs of ``topk_hamming_lookup_ragged``; return the batch size ``B``."""
    q = _signatures("query", query, (2,), "(B, W)", None)
    t = _signatures("table", table, (2,), "(N, W)", q.device)
    i = _on("ids", ids, q.device)
    batch, words = q.shape
    check_table_shape(tuple(t.shape), words)
    if not is_integer(i.dtype):
        raise DTypeError(f"ids must have an integer dtype, got {i.dtype}")
    if i.dim() != 1:
        raise ValueError(f"ids must have shape (T,): the flat ids of every row, got shape {_shape(tuple(i.shape))}")
    _check_k(k)
    check_ragged(offsets, mask, batch, i.shape[0], q.device)
    return batch


def _ragged_outputs(query: torch.Tensor, offsets: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty ``(B, k)`` results, ``B = offsets.numel() - 1`` (the fake kernels' outputs)."""
    batch = offsets.shape[0] - 1
    return query.new_empty((batch, k)), query.new_empty((batch, k), dtype=torch.int32)


def _topk_ragged_fake(
    query: torch.Tensor, keys: torch.Tensor, k: int, offsets: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    check_topk_ragged(query, keys, k, offsets, mask)
    return _ragged_outputs(query, offsets, k)


@_define("topk_hamming_ragged", _topk_ragged_fake)
def topk_hamming_ragged(
    query: torch.Tensor, keys: torch.Tensor, k: int, offsets: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``etaretrieval::topk_hamming_ragged``: ragged rows of flat keys (see :func:`topk_hamming`).

    Examples
    --------
    >>> import torch, etaretrieval.torch
    >>> keys = torch.tensor([[0b01], [0b00], [0b11], [0b10], [0b11]])
    >>> torch.ops.etaretrieval.topk_hamming_ragged(torch.tensor([[0b00], [0b11]]), keys, 2, torch.tensor([0, 2, 5]))
    (tensor([[1, 0],
            [2, 0]]), tensor([[0, 1],
            [0, 0]], dtype=torch.int32))
    """
    batch = check_topk_ragged(query, keys, k, offsets, mask)
    _require_cpu("topk_hamming_ragged", query)
    starts, lens = ragged.as_offsets(_array(offsets), batch, keys.shape[0], "keys")
    return _results(*cpu_ragged.topk_hamming(_uint64(query), _uint64(keys), k, starts, lens,
                                             _numpy(bool_mask(mask))))


def _lookup_ragged_fake(
    query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, k: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None, padding_id: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_lookup_ragged(query, ids, table, k, offsets, mask)
    return _ragged_outputs(query, offsets, k)


@_define("topk_hamming_lookup_ragged", _lookup_ragged_fake)
def topk_hamming_lookup_ragged(
    query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, k: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None, padding_id: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``etaretrieval::topk_hamming_lookup_ragged``: ragged rows of flat ids (see :func:`topk_hamming_lookup`).

    Examples
    --------
    >>> import torch, etaretrieval.torch
    >>> table = torch.tensor([[0b00], [0b01], [0b11]])
    >>> ids, offsets = torch.tensor([2, 0, 1, 0, 2, 1]), torch.tensor([0, 3, 6])
    >>> torch.ops.etaretrieval.topk_hamming_lookup_ragged(torch.tensor([[0b11], [0b00]]), ids, table, 2, offsets,
    ...                                                   padding_id=0)
    (tensor([[0, 2],
            [2, 1]]), tensor([[0, 1],
            [1, 2]], dtype=torch.int32))
    """
    if mask is None and padding_id is None:
        fast = _small_lookup(query, ids, table, k, offsets)
        if fast is not None:
            return fast
    batch = check_lookup_ragged(query, ids, table, k, offsets, mask)
    _require_cpu("topk_hamming_lookup_ragged", query)
    i = _array(ids)
    starts, lens = ragged.as_offsets(_array(offsets), batch, i.shape[0], "ids")
    return _results(*cpu_ragged.topk_hamming_lookup(_uint64(query), i, _uint64(table), k, starts, lens,
                                                    _numpy(bool_mask(mask)), as_padding(padding_id, i.dtype)))


def jagged(name: str, t: torch.Tensor, offsets: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(values, offsets)`` of a ``torch.nested`` jagged tensor ``t`` (``name`` in messages), else ``(t, offsets)``.

    The values and offsets are the tensor's own (no copy, no padded block).
    A jagged tensor carries its offsets, so ``offsets`` must be left out; one
    with holes (``lengths()`` set, e.g. from :func:`torch.nested.narrow`) has
    rows that offsets alone do not describe and is refused.
    """
    if not t.is_nested:
        return t, offsets
    if t.layout != torch.jagged:
        raise ValueError(f"{name} is a nested tensor of layout {t.layout}: only torch.jagged nested tensors are taken")
    if offsets is not None:
        raise ValueError(f"{name} is a jagged nested tensor, which carries its own offsets: leave offsets out")
    nested: Any = t  # torch's stubs type nested tensors as plain tensors
    if nested.lengths() is not None:
        raise ValueError(
            f"{name} is a jagged nested tensor with holes (lengths() set, e.g. from torch.nested.narrow): "
            "pass a contiguous one (.contiguous()) or its values and offsets"
        )
    return nested.values(), nested.offsets()




def _tensors(**args: object) -> None:
    """Refuse a non-tensor where a tensor (or ``None``, for the optional ones) is expected, naming the argument.

    The front ends read tensor attributes (``is_nested``, ``dtype``) before the
    dispatcher's own type check would run, and the dispatcher's refusal is a
    ``RuntimeError``; this one is the :class:`TypeError` every other front end raises.
    """
    for name, value in args.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def _required(**args: object) -> None:
    """Refuse ``None`` for a required tensor argument, naming it."""
    for name, value in args.items():
        if value is None:
            raise TypeError(f"{name} must be a torch.Tensor, got None")


def _pair(out: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(idx, dist)`` an op returns, typed."""
    return cast(tuple[torch.Tensor, torch.Tensor], out)


def _flat(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A flat mask, or the values of a jagged one (aligned with the flat values)."""
    return mask.values() if mask is not None and mask.is_nested else mask


def topk_hamming(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_side: str = "right",
    *,
    offsets: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` keys nearest to each query (see :func:`etaretrieval.topk_hamming`).

    Padded rows run ``torch.ops.etaretrieval.topk_hamming``; ragged rows
    (``offsets``, or ``keys`` a jagged nested tensor) run
    ``torch.ops.etaretrieval.topk_hamming_ragged``.

    Parameters
    ----------
    query : torch.Tensor
        ``(B, W)`` int64 signatures.
    keys : torch.Tensor
        ``(B, L, W)`` int64 signatures, or ``(L, W)`` shared by every row;
        with ``offsets``, the flat ``(T, W)`` keys of every row; or a
        ``torch.nested`` jagged tensor ``(B, j, W)`` (its ``values()`` and
        ``offsets()`` are read in place, no ``(B, L_max)`` block is built).
    k : int
        Positions to return per row, ``>= 0``.
    lengths : torch.Tensor, optional
        ``(B,)`` integers in ``0..L``: only the prefix of each row is valid
        (the last ``lengths[b]`` positions with ``padding_side="left"``).
    mask : torch.Tensor, optional
        ``(B, L)`` or ``(L,)`` valid positions: bool, or any real numeric
        dtype (an attention mask: non-zero = valid). Not together with ``lengths``.
        Ragged rows: flat ``(T,)`` (or a jagged tensor with the keys' offsets).
    padding_side : str, default "right"
        ``"left"`` for front-padded rows given by ``lengths``.
    offsets : torch.Tensor, optional
        Ragged rows: ``(B + 1,)`` int32/int64 non-decreasing offsets into
        the flat keys, row ``b`` being ``keys[offsets[b]:offsets[b + 1]]``
        (Arrow semantics: ``offsets[0]`` may be above 0; TorchRec's
        ``JaggedTensor.offsets()``). Positions then count from each row's
        start. Not together with ``lengths`` or ``padding_side="left"``.

    Returns
    -------
    idx : torch.Tensor
        ``(B, k)`` int64 positions, ordered by (distance ascending, position
        descending); ``-1`` past the valid positions of a row.
    dist : torch.Tensor
        ``(B, k)`` int32 Hamming distances; ``-1`` where ``idx`` is.

    Examples
    --------
    >>> import torch, etaretrieval.torch
    >>> keys = torch.tensor([[0b0001], [0b0111], [0b0010], [0b0000]])
    >>> torch.ops.etaretrieval.topk_hamming(torch.tensor([[0]]), keys, 3)
    (tensor([[3, 2, 0]]), tensor([[0, 1, 1]], dtype=torch.int32))
    >>> flat, offsets = torch.tensor([[0b01], [0b00], [0b11], [0b10], [0b11]]), torch.tensor([0, 2, 5])
    >>> etaretrieval.torch.topk_hamming(torch.tensor([[0b00], [0b11]]), flat, 2, offsets=offsets)
    (tensor([[1, 0],
            [2, 0]]), tensor([[0, 1],
            [0, 0]], dtype=torch.int32))
    """
    _required(query=query, keys=keys)
    _tensors(query=query, keys=keys, lengths=lengths, mask=mask, offsets=offsets)
    k = check_k(k)
    check_padding_side(padding_side)
    keys, offsets = jagged("keys", keys, offsets)
    if offsets is None:
        return _pair(_topk_padded(query, keys, k, lengths, mask, padding_side))
    ragged.check_offsets_alone(lengths, padding_side)
    return _pair(topk_hamming_ragged(query, keys, k, offsets, _flat(mask)))


def topk_hamming_lookup(
    query: torch.Tensor,
    ids: torch.Tensor,
    table: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_id: Optional[int] = None,
    padding_side: str = "right",
    *,
    offsets: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ids -> signature table -> top-``k`` (see :func:`etaretrieval.topk_hamming_lookup`).

    Padded rows run ``torch.ops.etaretrieval.topk_hamming_lookup``; ragged
    rows (``offsets``, or ``ids`` a jagged nested tensor) run
    ``torch.ops.etaretrieval.topk_hamming_lookup_ragged``.

    Parameters
    ----------
    query : torch.Tensor
        ``(B, W)`` int64 signatures.
    ids : torch.Tensor
        ``(B, L)`` or shared ``(L,)`` item ids of any integer dtype; with
        ``offsets``, the flat ``(T,)`` ids of every row; or a ``torch.nested``
        jagged tensor ``(B, j)`` of ids (read through ``values()`` and ``offsets()``).
    table : torch.Tensor
        ``(N, W)`` int64 signature table (e.g. :attr:`SignatureCache.signatures`).
    k : int
        Positions to return per row, ``>= 0``.
    lengths, mask : torch.Tensor, optional
        Valid positions, as in ``topk_hamming``.
    padding_id : int, optional
        Positions holding this id are not valid.
    padding_side : str, default "right"
        ``"left"`` for front-padded rows given by ``lengths``.
    offsets : torch.Tensor, optional
        Ragged rows: ``(B + 1,)`` offsets into the flat ids, as in ``topk_hamming``.

    Returns
    -------
    idx, dist : torch.Tensor
        As in ``topk_hamming``.

    Raises
    ------
    IndexError
        A valid position holds an id outside ``[0, N)`` (named by row and
        position within the row).

    Examples
    --------
    >>> import torch, etaretrieval.torch
    >>> table = torch.tensor([[0b00], [0b01], [0b11]])
    >>> ids = torch.tensor([[2, 0, 1, 0, 2]])
    >>> torch.ops.etaretrieval.topk_hamming_lookup(torch.tensor([[0b11]]), ids, table, 2, padding_id=0)
    (tensor([[4, 0]]), tensor([[0, 0]], dtype=torch.int32))
    >>> nested = torch.nested.nested_tensor_from_jagged(torch.tensor([2, 0, 1, 0, 2]), torch.tensor([0, 2, 5]))
    >>> etaretrieval.torch.topk_hamming_lookup(torch.tensor([[0b11], [0b00]]), nested, table, 2, padding_id=0)
    (tensor([[ 0, -1],
            [ 0,  2]]), tensor([[ 0, -1],
            [ 1,  2]], dtype=torch.int32))
    """
    if lengths is None and mask is None and padding_id is None and padding_side == "right" and _bypass_allowed():
        parts = _jagged_parts(ids) if offsets is None else None
        values, flat_offsets = (ids, offsets) if parts is None else parts
        fast = _small_lookup(query, values, table, k, flat_offsets)
        if fast is not None:
            return fast
    _required(query=query, ids=ids, table=table)
    _tensors(query=query, ids=ids, table=table, lengths=lengths, mask=mask, offsets=offsets)
    k = check_k(k)
    check_padding_side(padding_side)
    if padding_id is not None:
        padding_id = _as_int("padding_id", padding_id)
        if not -(2**63) <= padding_id < 2**63:
            raise ValueError(f"padding_id must be representable in int64, got {padding_id}")
    ids, offsets = jagged("ids", ids, offsets)
    if offsets is None:
        return _pair(_lookup_padded(query, ids, table, k, lengths, mask, padding_id, padding_side))
    ragged.check_offsets_alone(lengths, padding_side)
    return _pair(topk_hamming_lookup_ragged(query, ids, table, k, offsets, _flat(mask), padding_id))
