"""Strided (broadcast, non-contiguous) leading axes -> fixed 4-D kernel views.

The elementwise kernels (packing, Hamming) index ``D = 4`` leading axes. Any
number of leading axes is reduced to that: unit axes are dropped, adjacent
axes that are contiguous for every array are merged, and the few layouts that
still need more than four axes are cut into several launches along the
outermost ones. Nothing is copied; broadcast axes keep stride 0.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Sequence

import numpy as np

from . import _backend

__all__ = ["KERNEL_AXES", "broadcast_strides", "tiles"]

KERNEL_AXES = 4


def broadcast_strides(shape: Sequence[int], strides: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    """Byte strides of an array of leading ``shape`` broadcast to ``target`` (0 on broadcast axes)."""
    pad = len(target) - len(shape)
    out = []
    for j, n in enumerate(target):
        i = j - pad
        out.append(0 if i < 0 or shape[i] != n or n == 1 else int(strides[i]))
    return tuple(out)


def _collapse(shape: Sequence[int], strides: Sequence[Sequence[int]]) -> list[tuple[int, list[int]]]:
    merged: list[tuple[int, list[int]]] = []
    for j, n in enumerate(shape):
        if n == 1:
            continue
        st = [int(s[j]) for s in strides]
        if merged:
            prev_n, prev_st = merged[-1]
            if all(p == s * n for p, s in zip(prev_st, st)):
                merged[-1] = (prev_n * n, st)
                continue
        merged.append((int(n), st))
    return merged


def tiles(
    shape: Sequence[int],
    arrays: Sequence[tuple[Any, Sequence[int], tuple[int, ...], tuple[int, ...]]],
) -> Iterator[tuple[int, list[Any]]]:
    """Kernel views of ``arrays`` over the common leading ``shape``.

    Each entry of ``arrays`` is ``(numba_array, leading byte strides aligned
    to shape, trailing shape, trailing byte strides)``. Yields ``(row0,
    views)``: the C-order flat index of the first leading element covered
    and one view per array, of shape ``(4 leading axes) + trailing shape``.
    """
    merged = _collapse(shape, [a[1] for a in arrays])
    narr = len(arrays)
    if len(merged) <= KERNEL_AXES:
        outer: list[tuple[int, list[int]]] = []
        inner = [(1, [0] * narr)] * (KERNEL_AXES - len(merged)) + merged
    else:
        outer, inner = merged[:-KERNEL_AXES], merged[-KERNEL_AXES:]
    inner_shape = tuple(n for n, _ in inner)
    inner_size = int(np.prod(inner_shape, dtype=np.int64))
    for flat, where in enumerate(itertools.product(*(range(n) for n, _ in outer))):
        views = []
        for k, (arr, _, tail_shape, tail_strides) in enumerate(arrays):
            offset = sum(i * st[k] for i, (_, st) in zip(where, outer))
            strides = tuple(st[k] for _, st in inner) + tuple(tail_strides)
            views.append(_backend.view(arr, inner_shape + tuple(tail_shape), strides, offset=offset))
        yield flat * inner_size, views
