"""Buffers whose dtype a module keeps through ``half()``, ``double()`` or ``to(dtype)``."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

__all__ = ["FixedDtypeBuffers"]


class FixedDtypeBuffers(nn.Module):
    """Base of modules holding exact constants (hyperplanes, bucket boundaries) as buffers.

    ``model.half()`` converts every floating buffer; rounding the hyperplanes
    would change the signatures (and float16 planes are rejected), rounding
    float64 bucket boundaries would move them. The buffers named in
    ``_fixed_dtype`` follow device moves but keep their dtype.
    """

    _fixed_dtype: ClassVar[tuple[str, ...]] = ()

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        before = {name: getattr(self, name) for name in self._fixed_dtype}
        out = super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:  # the exact values, on the new device
                setattr(self, name, old.to(device=new.device))
        return out
