"""Segment operations over ragged rows kept as flat values + offsets (``torch.nested`` jagged tensors).

The modules take a history as a jagged nested tensor ``(B, j, ...)`` and work on
its flat ``values()`` ``(T, ...)`` and ``offsets()`` ``(B + 1,)``: per-value
scores, a softmax within each row, a weighted sum per row, the newest ``n``
values of each row. Nothing here builds a ``(B, L_max)`` tensor: every
operation costs ``O(T + B)`` (plus ``O(B n)`` for the window of
:func:`newest`), and all are torch operations on the values' device that
``torch.compile`` traces.

Row ``b`` is ``values[offsets[b]:offsets[b + 1]]`` (Arrow semantics:
``offsets[0]`` may be above 0, values past ``offsets[-1]`` belong to no row).
:func:`row_index` gives each value its row, ``B`` for a value of no row; the
segment operations take that index and leave such values out of every row.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .. import ragged
from .._validate import DTypeError, NonFiniteError, _shape, valid_nonfinite_error
from . import _ops

__all__ = [
    "is_jagged",
    "parts",
    "aligned",
    "floats",
    "ints",
    "flat_mask",
    "row_index",
    "newer",
    "newer_at",
    "segment_softmax",
    "segment_sum",
    "newest",
    "flat_index",
    "take",
    "nonfinite_at",
]


def is_jagged(t: object) -> bool:
    """Whether ``t`` is a ``torch.nested`` tensor (of any layout: :func:`parts` refuses the strided one)."""
    return type(t) is _ops._NESTED or (isinstance(t, torch.Tensor) and t.is_nested)


def parts(name: str, t: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, offsets)`` of a jagged nested tensor ``t``, the argument ``name`` of the caller.

    Parameters
    ----------
    name : str
        The argument ``t`` is, named in the errors.
    t : torch.Tensor
        A ``torch.nested`` tensor of layout ``torch.jagged`` without holes.

    Returns
    -------
    values : torch.Tensor
        ``(T, ...)`` the tensor's own flat values (no copy).
    offsets : torch.Tensor
        ``(B + 1,)`` its own offsets (no copy).

    Raises
    ------
    TypeError
        ``t`` is not a tensor.
    ValueError
        ``t`` is not a jagged nested tensor, has holes (``lengths()`` set),
        or its offsets break the rules of ragged rows (non-decreasing, within
        the values; checked outside ``torch.compile``, where the ops check them).

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import parts
    >>> seq = torch.nested.nested_tensor_from_jagged(torch.arange(5), torch.tensor([0, 2, 5]))
    >>> values, offsets = parts("seq", seq)
    >>> values.tolist(), offsets.tolist()
    ([0, 1, 2, 3, 4], [0, 2, 5])
    >>> parts("seq", torch.zeros(2, 3))
    Traceback (most recent call last):
        ...
    ValueError: seq must be a torch.nested jagged tensor here, got a dense tensor of shape (2, 3)
    """
    values, offsets = _unpack(name, t)
    if not torch.compiler.is_compiling():  # B + 1 integers read back; compiled graphs leave this to the ops
        if not _ops.is_integer(offsets.dtype):
            raise DTypeError(f"{name} has offsets of dtype {offsets.dtype}, need int32 or int64")
        try:
            ragged.as_offsets(offsets.detach().cpu().numpy(), offsets.shape[0] - 1, values.shape[0], name)
        except ValueError as err:
            raise ValueError(f"{name} has bad offsets: {err}") from None
    return values, offsets


def _unpack(name: str, t: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, offsets)`` of a jagged nested tensor, its offsets' values unchecked.

    In eager mode the values of an integer or bool jagged tensor (ids, times,
    categories, a mask: nothing to differentiate) are read from its fields:
    its methods each run through its ``__torch_function__``, tens of
    microseconds a call, a few times per module call.
    """
    if type(t) is _ops._NESTED and not torch.compiler.is_compiling():
        nested: Any = t
        values = nested._values
        if not values.dtype.is_floating_point and nested._lengths is None and nested._ragged_idx == 1:
            return values, nested._offsets
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_nested:
        raise ValueError(f"{name} must be a torch.nested jagged tensor here, got a dense tensor of shape "
                         f"{_shape(tuple(t.shape))}")
    values, offsets = _ops.jagged(name, t, None)
    assert offsets is not None
    return values, offsets


def aligned(name: str, t: object, offsets: torch.Tensor, total: int, of: str) -> torch.Tensor:
    """The flat values of ``t``, a jagged tensor that must have the rows of the argument ``of``.

    ``t`` (times, categories or a mask beside a jagged history) must carry
    the same offsets as ``of`` (the same tensor, as when both are made from
    one offsets tensor, or equal values) and ``total`` values.

    Parameters
    ----------
    name : str
        The argument ``t`` is, named in the errors.
    t : torch.Tensor
        A jagged nested tensor.
    offsets : torch.Tensor
        ``(B + 1,)`` the offsets of ``of``.
    total : int
        ``T``, the number of values of ``of``.
    of : str
        The argument whose rows ``t`` must have.

    Returns
    -------
    torch.Tensor
        ``(T, ...)`` the values of ``t``.

    Raises
    ------
    ValueError
        ``t`` is not a jagged tensor, or its offsets or number of values
        differ from those of ``of``. Under ``torch.compile`` equal offsets
        held in different tensors are compared on the device, and a
        mismatch raises a ``RuntimeError`` naming ``name`` when the graph runs.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import aligned
    >>> offsets = torch.tensor([0, 2, 5])
    >>> times = torch.nested.nested_tensor_from_jagged(torch.arange(5), torch.tensor([0, 3, 5]))
    >>> aligned("times", times, offsets, 5, "history")
    Traceback (most recent call last):
        ...
    ValueError: times must have the offsets of history ([0, 2, 5]), got [0, 3, 5]
    """
    values, own = _unpack(name, t)
    if own is not offsets:
        if own.shape != offsets.shape:
            raise ValueError(f"{name} must have the {offsets.shape[0] - 1} rows of {of}, got {own.shape[0] - 1}")
        if own.device != offsets.device:
            raise ValueError(f"{name} must be on the device of {of} ({offsets.device}), got {own.device}")
        if torch.compiler.is_compiling():  # a data-dependent check: asserted when the graph runs
            torch._assert_async((own == offsets).all(), f"{name} must have the offsets of {of}")
        elif not torch.equal(own, offsets.to(own.dtype)):
            raise ValueError(f"{name} must have the offsets of {of} ({offsets.tolist()}), got {own.tolist()}")
    if values.shape[0] != total:
        raise ValueError(f"{name} must have the {total} values of {of}, got {values.shape[0]}")
    return values


def floats(name: str, t: object, batch: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, offsets)`` of a jagged ``(B, j, dim)`` float history ``t`` (the argument ``name``), checked.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import floats
    >>> seq = torch.nested.nested_tensor_from_jagged(torch.zeros(5, 3), torch.tensor([0, 2, 5]))
    >>> floats("seq", seq, 2, 4, torch.device("cpu"))
    Traceback (most recent call last):
        ...
    ValueError: seq must have shape (2, j, 4) (a jagged tensor), got 2 rows, values of shape (5, 3)
    """
    values, offsets = parts(name, t)
    if not values.dtype.is_floating_point:
        raise DTypeError(f"{name} must have a floating-point dtype, got {values.dtype}")
    if values.dim() != 2 or values.shape[1] != dim or offsets.shape[0] != batch + 1:
        raise ValueError(f"{name} must have shape ({batch}, j, {dim}) (a jagged tensor), got "
                         f"{_rows(values, offsets)}")
    if values.device != device:
        raise ValueError(f"{name} must be on the device of target ({device}), got {values.device}")
    return values, offsets


def ints(name: str, t: object, offsets: torch.Tensor, total: int, of: str) -> torch.Tensor:
    """The flat ``(T,)`` values of ``t``, a jagged integer tensor ``(B, j)`` with the rows of ``of``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import ints
    >>> offsets = torch.tensor([0, 2, 5])
    >>> ints("times", torch.nested.nested_tensor_from_jagged(torch.zeros(5), offsets), offsets, 5, "seq")
    Traceback (most recent call last):
        ...
    etaretrieval._validate.DTypeError: times must have an integer dtype, got torch.float32
    """
    values = aligned(name, t, offsets, total, of)
    if not _ops.is_integer(values.dtype):
        raise DTypeError(f"{name} must have an integer dtype, got {values.dtype}")
    if values.dim() != 1:
        raise ValueError(f"{name} must have shape (B, j) (a jagged tensor of scalars), got "
                         f"{_rows(values, offsets)}")
    return values


def flat_mask(mask: object, offsets: torch.Tensor, total: int, of: str) -> Optional[torch.Tensor]:
    """The flat ``(T,)`` bool mask of a jagged ``mask`` (bool, or numeric with non-zero = valid) or ``None``.

    A dense mask is refused: a jagged ``of`` has no padding to mask, and a
    mask of its rows is itself jagged (with the same offsets).

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import flat_mask
    >>> offsets = torch.tensor([0, 2, 3])
    >>> flat_mask(torch.nested.nested_tensor_from_jagged(torch.tensor([1, 0, 2]), offsets), offsets, 3, "seq")
    tensor([ True, False,  True])
    >>> flat_mask(torch.ones(2, 2, dtype=torch.bool), offsets, 3, "seq")
    Traceback (most recent call last):
        ...
    ValueError: mask must be None or a jagged tensor with the rows of seq, got a dense tensor of shape (2, 2)
    """
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor) and not mask.is_nested:
        raise ValueError(f"mask must be None or a jagged tensor with the rows of {of}, got a dense tensor of shape "
                         f"{_shape(tuple(mask.shape))}")
    values = aligned("mask", mask, offsets, total, of)
    if values.dtype.is_complex or values.dim() != 1:
        raise ValueError(f"mask must be a (B, j) jagged tensor of bool (or real numbers, non-zero = valid), got "
                         f"dtype {values.dtype}, {_rows(values, offsets)}")
    return _ops.bool_mask(values)


def _rows(values: torch.Tensor, offsets: torch.Tensor) -> str:
    """A jagged tensor's rows and values shape, for messages."""
    return f"{offsets.shape[0] - 1} rows, values of shape {_shape(tuple(values.shape))}"


#: Each flat value's row (see :func:`etaretrieval.torch._ops.row_index`).
row_index = _ops.row_index


def newer(offsets: torch.Tensor, rows: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(T,)`` int64: how many valid values of its row follow each value (``0`` for the newest).

    Parameters
    ----------
    offsets : torch.Tensor
        ``(B + 1,)`` row offsets.
    rows : torch.Tensor
        ``(T,)`` :func:`row_index` of the values.
    valid : torch.Tensor, optional
        ``(T,)`` bool, the values that count (``None``: all).

    Returns
    -------
    torch.Tensor
        ``(T,)`` int64; unspecified for values of no row.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import newer, row_index
    >>> offsets = torch.tensor([0, 3, 5])
    >>> newer(offsets, row_index(offsets, 5)).tolist()
    [2, 1, 0, 1, 0]
    >>> newer(offsets, row_index(offsets, 5), torch.tensor([True, False, True, True, False])).tolist()
    [1, 1, 0, 0, 0]
    """
    o = offsets.to(torch.int64)
    ends = torch.cat([o[1:], o[-1:]])  # each row's end; a value of no row reads the last one
    if valid is None:
        return (ends.index_select(0, rows) - 1 - torch.arange(rows.shape[0], device=rows.device)).clamp(min=0)
    counts = torch.cat([valid.new_zeros(1, dtype=torch.int64), valid.to(torch.int64).cumsum(0)])
    return counts.index_select(0, ends.clamp(max=rows.shape[0])).index_select(0, rows) - counts[1:]


def newer_at(offsets: torch.Tensor, index: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(B, k)`` int64: how many valid values of row ``b`` follow the value at flat ``index[b, j]``.

    :func:`newer` at ``(B, k)`` flat indices of each row's values (as
    :func:`flat_index` gives them) without computing it for every value;
    unspecified where ``index < 0``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import newer_at
    >>> offsets, index = torch.tensor([0, 3, 5]), torch.tensor([[0, 2], [3, 4]])
    >>> newer_at(offsets, index).tolist()
    [[2, 0], [1, 0]]
    >>> newer_at(offsets, index, torch.tensor([True, False, True, True, True])).tolist()
    [[1, 0], [1, 0]]
    """
    ends = offsets[1:].to(torch.int64).unsqueeze(1)
    if valid is None:
        return ends - 1 - index
    counts = torch.cat([valid.new_zeros(1, dtype=torch.int64), valid.to(torch.int64).cumsum(0)])
    return counts[ends] - counts[index.clamp(min=-1) + 1]


def segment_softmax(
    scores: torch.Tensor, rows: torch.Tensor, batch: int, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Softmax of ``scores`` ``(T, ...)`` over the values of each row (dimension 0 grouped by ``rows``).

    Parameters
    ----------
    scores : torch.Tensor
        ``(T, ...)`` floating-point scores (e.g. ``(T, heads)``).
    rows : torch.Tensor
        ``(T,)`` int64 row of each value, in ``0..batch`` (``batch``: no row).
    batch : int
        Number of rows ``B``.
    valid : torch.Tensor, optional
        ``(T,)`` bool: only valid values take part (``None``: all).

    Returns
    -------
    torch.Tensor
        The weights, like ``scores``: within each row (and each trailing
        index) they sum to 1 over the valid values; ``0`` at invalid values,
        and at every value of a row with no valid value (never NaN).
        Differentiable w.r.t. ``scores``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import segment_softmax
    >>> w = segment_softmax(torch.tensor([0.0, 0.0, 5.0, 1.0]), torch.tensor([0, 0, 1, 2]), 3,
    ...                     torch.tensor([True, True, True, False]))
    >>> w.tolist()
    [0.5, 0.5, 1.0, 0.0]
    """
    shape = (batch + 1, *scores.shape[1:])
    where = rows.view(-1, *([1] * (scores.dim() - 1))).expand(scores.shape)
    s = scores if valid is None else scores.masked_fill(_trailing(~valid, scores), float("-inf"))
    top = s.new_full(shape, float("-inf")).scatter_reduce(0, where, s.detach(), "amax", include_self=False)
    top = torch.where(torch.isfinite(top), top, 0)  # rows with no valid value: keep exp(-inf) = 0 finite
    e = torch.exp(s - top.index_select(0, rows))
    total = e.new_zeros(shape).index_add(0, rows, e)
    return e / torch.where(total > 0, total, 1).index_select(0, rows)


def segment_sum(x: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B, ...)`` sums of the values ``x`` ``(T, ...)`` of each row; zeros for an empty row.

    Values of no row (``rows == batch``) are left out. Differentiable w.r.t. ``x``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import segment_sum
    >>> segment_sum(torch.tensor([1.0, 2.0, 4.0, 8.0]), torch.tensor([0, 0, 2, 3]), 3).tolist()
    [3.0, 0.0, 4.0]
    """
    return x.new_zeros((batch + 1, *x.shape[1:])).index_add(0, rows, x)[:batch]


def newest(offsets: torch.Tensor, n: int, valid: Optional[torch.Tensor] = None,
           rows: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The newest ``n`` valid values of each row: flat indices ``(B, n)``, oldest first, empty slots first.

    The window of a padded history left-padded to width ``n``.

    Parameters
    ----------
    offsets : torch.Tensor
        ``(B + 1,)`` row offsets.
    n : int
        Window width, ``>= 0``.
    valid : torch.Tensor, optional
        ``(T,)`` bool, the values that may be taken (``None``: all).
    rows : torch.Tensor, optional
        ``(T,)`` :func:`row_index` of the values; needed with ``valid``.

    Returns
    -------
    index : torch.Tensor
        ``(B, n)`` int64 indices into the flat values; ``-1`` in empty slots
        (a row with fewer than ``n`` valid values), which come first.
    filled : torch.Tensor
        ``(B, n)`` bool, ``index >= 0``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import newest, row_index
    >>> offsets = torch.tensor([0, 4, 5, 5])
    >>> newest(offsets, 2)[0].tolist()
    [[2, 3], [-1, 4], [-1, -1]]
    >>> valid = torch.tensor([True, True, False, True, True])
    >>> newest(offsets, 3, valid, row_index(offsets, 5))[0].tolist()
    [[0, 1, 3], [-1, -1, 4], [-1, -1, -1]]
    """
    o = offsets.to(torch.int64)
    batch = o.shape[0] - 1
    if valid is None:
        index = o[1:].unsqueeze(1) - n + torch.arange(n, device=o.device)
        filled = index >= o[:-1].unsqueeze(1)
        return torch.where(filled, index, -1), filled
    if rows is None:
        raise ValueError("newest needs rows (the row_index of the values) with valid")
    rank = newer(offsets, rows, valid)  # 0 for the newest valid value of a row
    keep = valid & (rank < n) & (rows < batch)
    slot = torch.where(keep, rows * n + (n - 1) - rank, batch * n)  # the others go to a slot past the end
    flat = torch.arange(rows.shape[0], device=rows.device)
    index = flat.new_full((batch * n + 1,), -1).scatter(0, slot, torch.where(keep, flat, -1))
    index = index[: batch * n].view(batch, n)
    return index, index >= 0


def flat_index(offsets: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Flat indices ``offsets[b] + position[b, j]`` of ``(B, k)`` positions counted from each row's start; ``-1`` stays.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import flat_index
    >>> flat_index(torch.tensor([2, 5, 9]), torch.tensor([[1, -1], [3, 0]])).tolist()
    [[3, -1], [8, 5]]
    """
    return torch.where(position >= 0, offsets[:-1].to(torch.int64).unsqueeze(1) + position, -1)


def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` ``(*index.shape, ...)`` with zeros where ``index < 0``; differentiable w.r.t. ``values``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch._jagged import take
    >>> take(torch.tensor([[1.0], [2.0]]), torch.tensor([[1, -1]])).tolist()
    [[[2.0], [0.0]]]
    """
    if values.shape[0] == 0:  # nothing to read: every slot is empty
        return values.new_zeros((*index.shape, *values.shape[1:]))
    got = values.index_select(0, index.clamp(min=0).reshape(-1)).view(*index.shape, *values.shape[1:])
    return torch.where(_trailing(index >= 0, got), got, 0)


def nonfinite_at(name: str, err: NonFiniteError, offsets: torch.Tensor) -> NonFiniteError:
    """``err`` (a non-finite flat value ``err.where = (t,)`` of the argument ``name``) naming its row and position.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval._validate import NonFiniteError
    >>> from etaretrieval.torch._jagged import nonfinite_at
    >>> str(nonfinite_at("seq", NonFiniteError("x holds a NaN", (3,)), torch.tensor([0, 2, 5])))[:60]
    'seq holds a non-finite value (NaN or inf) in row 1 at positi'
    """
    if len(err.where) != 1:
        return err
    o = offsets.detach().cpu().to(torch.int64)
    row = int(torch.searchsorted(o[1:], torch.tensor(err.where[0]), right=True))
    found = valid_nonfinite_error((row, err.where[0] - int(o[row])))
    return NonFiniteError(f"{name}{str(found)[1:]}", found.where)


def _trailing(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` with singleton dimensions appended to broadcast against ``like``."""
    return mask.view(*mask.shape, *([1] * (like.dim() - mask.dim())))
