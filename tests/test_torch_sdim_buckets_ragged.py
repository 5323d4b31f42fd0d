"""``torch.ops.etaretrieval.sdim_buckets_ragged``: the NumPy function's summaries, its fake kernel and ATen form."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_sdim_buckets_ragged import Case, cases  # noqa: E402

import etaretrieval.torch  # noqa: E402, F401  (registers the operators)
from etaretrieval.ragged import sdim_buckets_ragged  # noqa: E402
from etaretrieval.torch import aten, decompositions  # noqa: E402

ops = torch.ops.etaretrieval


def t64(a: np.ndarray) -> torch.Tensor:
    """uint64 signature words as the int64 tensor the operators take (same bits)."""
    return torch.from_numpy(np.ascontiguousarray(a).view(np.int64))


@settings(max_examples=30, deadline=None)
@given(case=cases(), numeric_mask=st.booleans())
def test_op_and_aten_form_equal_numpy(case: Case, numeric_mask: bool) -> None:
    want = sdim_buckets_ragged(case.keys, case.values, case.tau, case.offsets, bits=case.bits, mask=case.mask)
    mask = None if case.mask is None else torch.from_numpy(case.mask)
    if mask is not None and numeric_mask:
        mask = mask.to(torch.int32) * 3  # non-zero = valid
    keys, values, offsets = t64(case.keys), torch.from_numpy(case.values), torch.from_numpy(case.offsets)
    before = [t.clone() for t in (keys, values, offsets)]
    got = ops.sdim_buckets_ragged(keys, values, case.tau, case.bits, offsets, mask)
    assert torch.equal(got, torch.from_numpy(want))
    assert torch.equal(aten.sdim_buckets_ragged(keys, values, case.tau, case.bits, offsets, mask), got)
    assert all(torch.equal(a, b) for a, b in zip(before, (keys, values, offsets)))


def test_opcheck() -> None:
    rng = np.random.default_rng(2)
    keys = t64(rng.integers(0, 2**64, (14, 1), np.uint64))
    values = torch.randn(14, 3, dtype=torch.float64)
    offsets, mask = torch.tensor([1, 5, 5, 13]), torch.from_numpy(rng.random(14) < 0.7)
    torch.library.opcheck(ops.sdim_buckets_ragged, (keys, values, 4, 64, offsets), {"mask": mask})
    torch.library.opcheck(ops.sdim_buckets_ragged, (keys, values.float(), 2, 60, offsets.int()), {})
    torch.library.opcheck(ops.sdim_buckets_ragged, (keys, values, 1, 64, torch.tensor([3])), {})


def test_decompositions_hold_the_aten_form() -> None:
    assert decompositions()[ops.sdim_buckets_ragged.default] is aten.sdim_buckets_ragged


def test_cuda_kernel_is_registered() -> None:
    assert torch._C._dispatch_has_kernel_for_dispatch_key("etaretrieval::sdim_buckets_ragged", "CUDA")


def _i64(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.int64)


@pytest.mark.parametrize(
    ("offsets", "mask", "error", "match"),
    [
        (torch.tensor([[0, 2]]), None, ValueError, "offsets must have shape (B + 1,) for B rows, got shape (1, 2)"),
        (torch.tensor([0.0, 2.0]), None, TypeError, "offsets must have an integer dtype"),
        (torch.tensor([0, 3, 2]), None, ValueError, "offsets must be non-decreasing"),
        (torch.tensor([0, 2, 5]), None, ValueError, "offsets must lie within the 4 entries of keys"),
        (torch.tensor([0, 2, 4]), torch.ones(2, 2, dtype=torch.bool), ValueError, "mask must have shape (4,)"),
    ],
)
def test_errors_name_offsets_and_mask(offsets: torch.Tensor, mask: torch.Tensor | None, error: type,
                                      match: str) -> None:
    with pytest.raises(error, match=re.escape(match)):
        ops.sdim_buckets_ragged(_i64(4, 1), torch.zeros(4, 2), 1, 64, offsets, mask)


def test_aten_form_asserts_bad_offsets() -> None:
    with pytest.raises(RuntimeError, match="offsets must be non-decreasing"):
        aten.sdim_buckets_ragged(_i64(4, 1), torch.zeros(4, 2), 1, 64, torch.tensor([0, 3, 2]))
