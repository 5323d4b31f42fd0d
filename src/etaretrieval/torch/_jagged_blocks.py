"""One view of a behaviour history, padded ``(B, L, d)`` or jagged ``(B, j, d)``, for the interest blocks.

A block written against :class:`History` computes its per-behaviour quantities
(selection scores, intervals, sums) with the same code for both layouts. Padded,
``items`` is ``(B, L, d)`` and a per-behaviour tensor ``(B, L)``; jagged (a
``torch.nested`` tensor of layout ``torch.jagged``), ``items`` is the flat
``(T, d)`` values and a per-behaviour tensor ``(T,)``, with ``rows`` naming each
value's row. The jagged path never builds a ``(B, L_max)`` tensor: per-row
inputs reach the behaviours through ``rows`` (:meth:`History.per_row`), and
per-row results come from segment sums and ``(B, k)`` gathers.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .._validate import _shape
from . import _ops
from ._checks import _bool_mask, _floats, _ints
from ._jagged import flat_index, flat_mask, floats, ints, is_jagged, segment_sum, take
from .time import TimeEncoding, gather_positions

__all__ = ["History", "history"]


class History(NamedTuple):
    """Checked behaviours of a batch, padded or flat.

    Attributes
    ----------
    items : torch.Tensor
        ``(B, L, d)`` padded, or ``(T, d)`` flat values (jagged).
    rows : torch.Tensor
        Each behaviour's row, int64: ``(B, L)`` (``b`` everywhere in row
        ``b``), or ``(T,)`` (``B`` for values of no row, outside the offsets).
    positions : torch.Tensor
        Each behaviour's position in its row, int64, the shape of ``rows``.
    mask : torch.Tensor or None
        Bool valid behaviours, the shape of ``rows``; ``None``: all valid.
    offsets : torch.Tensor or None
        The ``(B + 1,)`` row offsets of a jagged history (its own tensor);
        ``None`` padded.
    """

    items: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    mask: Optional[torch.Tensor]
    offsets: Optional[torch.Tensor]

    @property
    def batch(self) -> int:
        """Number of rows ``B``."""
        return self.items.shape[0] if self.offsets is None else self.offsets.shape[0] - 1

    def per_row(self, x: torch.Tensor) -> torch.Tensor:
        """A per-row tensor ``(B, ...)`` at each behaviour: ``(B, 1, ...)`` (broadcasting) or ``(T, ...)``.

        Values of no row read zeros.
        """
        if self.offsets is None:
            return x.unsqueeze(1)
        return torch.cat([x, x.new_zeros((1, *x.shape[1:]))])[self.rows]

    def align(self, name: str, t: object) -> torch.Tensor:
        """Check a required integer per-behaviour argument (``seq_cat``, ``seq_time``); return it in this layout.

        Padded: ``(B, L)``. Jagged: a jagged ``(B, j)`` tensor with the
        history's offsets, whose flat values are returned.
        """
        if self.offsets is None:
            return _ints(name, t, tuple(self.rows.shape), self.items.device)
        if t is None:
            raise ValueError(f"{name} is required here (a jagged (B, j) tensor with the offsets of seq)")
        return ints(name, t, self.offsets, self.items.shape[0], "seq")

    def gather(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``(B, k, ...)`` per-behaviour values at ``(B, k)`` positions of each row (``-1``: a row the caller masks)."""
        if self.offsets is None:
            return gather_positions(x, index)
        return take(x, flat_index(self.offsets, index))

    def sum_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row sums ``(B, ...)`` of a per-behaviour tensor (values of no row left out)."""
        if self.offsets is None:
            return x.sum(1)
        return segment_sum(x, self.rows, self.batch)

    def intervals(
        self, time: TimeEncoding, seq_time: Optional[torch.Tensor], target_time: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Each behaviour's interval (see :meth:`TimeEncoding.intervals`), per behaviour in this layout."""
        if self.offsets is None:
            return time.intervals(self.mask, seq_time, target_time, shape=(self.rows.shape[0], self.rows.shape[1]))
        flat_time = None if seq_time is None else self.align("seq_time", seq_time)
        return time.flat_intervals(self.offsets, self.rows, self.mask, flat_time, target_time)

    def embed_time(
        self, time: TimeEncoding, seq_time: Optional[torch.Tensor], target_time: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Each behaviour's time embedding, per behaviour in this layout."""
        return time.embed(self.intervals(time, seq_time, target_time))

    def nested(self, x: torch.Tensor) -> torch.Tensor:
        """A per-behaviour tensor in the caller's layout: padded as it is, flat as a jagged tensor of these rows."""
        if self.offsets is None:
            return x
        return torch.nested.nested_tensor_from_jagged(x, self.offsets)


def history(dim: int, target: torch.Tensor, seq: object, mask: object) -> History:
    """Check ``target`` ``(B, dim)``, ``seq`` ``(B, L, dim)`` or jagged ``(B, j, dim)`` and ``mask``.

    A jagged ``seq`` takes a jagged ``mask`` with its offsets, or ``None``
    (a dense one is refused); numeric masks count non-zero as valid.
    """
    _floats("target", target, 2, f"(B, {dim})")
    if is_jagged(seq):
        if target.shape[1] != dim:
            raise ValueError(f"target must have shape (B, {dim}), got shape {_shape(tuple(target.shape))}")
        values, offsets = floats("seq", seq, target.shape[0], dim, target.device)
        _, rows, positions = _ops.ragged_rows(offsets, values.shape[0])
        return History(values, rows, positions, flat_mask(mask, offsets, values.shape[0], "seq"), offsets)
    _floats("seq", seq, 3, f"(B, L, {dim})", target.device)
    assert isinstance(seq, torch.Tensor)
    batch, length = seq.shape[0], seq.shape[1]
    if target.shape[1] != dim or batch != target.shape[0] or seq.shape[2] != dim:
        raise ValueError(
            f"target and seq must have shapes (B, {dim}) and (B, L, {dim}), "
            f"got {_shape(tuple(target.shape))} and {_shape(tuple(seq.shape))}"
        )
    rows = torch.arange(batch, device=seq.device).unsqueeze(1).expand(batch, length)
    positions = torch.arange(length, device=seq.device).expand(batch, length)
    valid = None if mask is None else _bool_mask(mask, (batch, length), target.device)
    return History(seq, rows, positions, valid, None)
