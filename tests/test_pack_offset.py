"""``pack_signatures(..., offset=)``: affine hyperplanes ``x @ planes + offset`` on every layer.

The NumPy function (request-sized Numba path and table-sized BLAS path), the
torch op (both CPU paths, its fake kernel, ``opcheck``), the ATen form and the
CUDA kernel (under the simulator: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest
tests/test_pack_offset.py -m cudasim -p no:cacheprovider``) against a float64
reference; the offset path against the affine form it replaces (``[x, 1]``
hashed with ``[planes; offset]``), bit for bit where both sum in order. Also
``hyperplanes(..., orthogonal=True)``, the other half of hashing in the
attention's space well.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import etaretrieval as er

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
FLOATS = st.sampled_from([np.float32, np.float64])
BITS = st.sampled_from([1, 7, 63, 64, 65, 100, 130, 256])
LEAD = st.sampled_from([(), (0,), (1,), (5,), (2, 3), (3, 0, 2), (2, 2, 3)])


def gaussian(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def integer_valued(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, span: int = 3) -> np.ndarray:
    """Small integers as floats: every projection (offset included) is exact, and often exactly 0."""
    return rng.integers(-span, span + 1, size=shape).astype(dtype)


def reference(x: np.ndarray, planes: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(projection, clear)``: ``x @ planes + offset`` in float64 (the offset rounded to the working dtype)
    and where its sign cannot depend on the rounding of the working dtype."""
    ctype = np.result_type(x.dtype, planes.dtype)
    proj = ref.projection(x, planes) + offset.astype(ctype).astype(np.float64)
    scale = np.abs(x.astype(np.float64)) @ np.abs(planes.astype(np.float64)) + np.abs(offset.astype(np.float64))
    bound = 4 * (planes.shape[0] + 2) * np.finfo(ctype).eps * scale
    return proj, np.abs(proj) > bound


def bits_of(sig: np.ndarray, bits: int) -> np.ndarray:
    """``(..., bits)`` bool: bit ``j`` of each ``(..., W)`` uint64 signature."""
    j = np.arange(bits)
    return ((np.asarray(sig)[..., j // 64] >> (j % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)


def affine(x: np.ndarray, planes: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The form the offset replaces: ``[x, 1]`` and ``[planes; offset]`` (one more column and row)."""
    ones = np.ones(x.shape[:-1] + (1,), dtype=x.dtype)
    return np.concatenate([x, ones], axis=-1), np.concatenate([planes, offset[None].astype(planes.dtype)])


# ----------------------------------------------------------------------------- NumPy


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), lead=LEAD, dim=st.integers(1, 20), bits=BITS, xdtype=FLOATS, pdtype=FLOATS,
       odtype=FLOATS, blas=st.booleans())
def test_offset_equals_the_float64_reference_away_from_zero(
    pack_chunk_elements: Any, seed: int, lead: tuple[int, ...], dim: int, bits: int, xdtype: Any, pdtype: Any,
    odtype: Any, blas: bool,
) -> None:
    rng = np.random.default_rng(seed)
    x, planes = gaussian(rng, lead + (dim,), xdtype), gaussian(rng, (dim, bits), pdtype)
    offset = (3 * rng.standard_normal(bits)).astype(odtype)
    proj, clear = reference(x, planes, offset)
    if blas:
        with pack_chunk_elements(int(rng.integers(1, 300))):
            got = er.pack_signatures(x, planes, offset=offset)
    else:
        got = er.pack_signatures(x, planes, offset=offset)
    assert got.shape == lead + (ref.words_for(bits),) and got.dtype == np.uint64
    np.testing.assert_array_equal(bits_of(got, bits)[clear], (proj > 0)[clear])
    np.testing.assert_array_equal(ref.clear_unused_bits(got, bits), got)  # unused high bits stay 0


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), lead=LEAD, dim=st.integers(1, 6), bits=BITS, xdtype=FLOATS, pdtype=FLOATS,
       blas=st.booleans())
def test_offset_exact_on_integer_inputs(
    pack_chunk_elements: Any, seed: int, lead: tuple[int, ...], dim: int, bits: int, xdtype: Any, pdtype: Any,
    blas: bool,
) -> None:
    """Exact projections, zeros included: every path gives the reference's bits (exactly 0 gives 0)."""
    rng = np.random.default_rng(seed)
    x, planes = integer_valued(rng, lead + (dim,), xdtype), integer_valued(rng, (dim, bits), pdtype)
    offset = integer_valued(rng, (bits,), pdtype, span=2)
    want = ref.pack_from_projection(ref.projection(x, planes, exact=True) + offset)
    if blas:
        with pack_chunk_elements(7):
            np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=offset), want)
    else:
        np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=offset), want)


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), lead=LEAD, dim=st.integers(1, 20), bits=BITS, xdtype=FLOATS, pdtype=FLOATS)
def test_request_sized_offset_is_the_affine_form_bit_for_bit(
    seed: int, lead: tuple[int, ...], dim: int, bits: int, xdtype: Any, pdtype: Any
) -> None:
    """The in-order sum adds the offset last, as the wider ``[x, 1]`` does: no rounding difference at all."""
    rng = np.random.default_rng(seed)
    x, planes = gaussian(rng, lead + (dim,), xdtype), gaussian(rng, (dim, bits), pdtype)
    offset = gaussian(rng, (bits,), pdtype)
    np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=offset),
                                  er.pack_signatures(*affine(x, planes, offset)))


def test_no_offset_and_zero_offset_are_the_plain_simhash(pack_chunk_elements: Any) -> None:
    rng = np.random.default_rng(3)
    x, planes = gaussian(rng, (4, 9, 12), np.float32), er.hyperplanes(12, 130, seed=2)
    plain = er.pack_signatures(x, planes)
    np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=None), plain)
    np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=np.zeros(130)), plain)
    with pack_chunk_elements(50):
        np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=np.zeros(130, np.float32)), plain)


def test_offset_moves_the_hyperplanes() -> None:
    """A large offset decides the bit whatever ``x``: every bit of a positive offset is set, of a negative clear."""
    rng = np.random.default_rng(4)
    x, planes = gaussian(rng, (6, 5), np.float64), er.hyperplanes(5, 70, seed=1)
    offset = np.where(np.arange(70) % 3 == 0, 1e6, -1e6)
    want = ref.pack_from_projection(np.broadcast_to(offset, (6, 70)))
    np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=offset), want)


def test_offset_layouts_and_inputs_untouched(pack_chunk_elements: Any) -> None:
    rng = np.random.default_rng(5)
    x, planes = gaussian(rng, (7, 6), np.float32), gaussian(rng, (6, 65), np.float32)
    wide = gaussian(rng, (3, 65), np.float64)
    offset = ref.readonly(wide[1])
    before = (x.copy(), planes.copy(), wide.copy())
    want = er.pack_signatures(x, planes, offset=np.ascontiguousarray(offset))
    np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=wide[::-1][1]), want)  # read-only view
    np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=wide.T[:, 1].T), want)
    np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=list(wide[1])), want)  # array_like
    np.testing.assert_array_equal(er.pack_signatures(x[::-1], planes, offset=offset), want[::-1])
    for got, old in zip((x, planes, wide), before):
        np.testing.assert_array_equal(got, old)


@pytest.mark.filterwarnings("ignore:invalid value encountered in:RuntimeWarning")  # inf * 0 in the projections
@pytest.mark.parametrize("blas", [False, True])
def test_offset_non_finite_rows(pack_chunk_elements: Any, blas: bool) -> None:
    rng = np.random.default_rng(6)
    x, planes, offset = gaussian(rng, (3, 4, 5), np.float64), gaussian(rng, (5, 70), np.float32), np.ones(70)
    x[1, 2, 3] = np.nan
    x[2, 0, 0] = -np.inf
    with pack_chunk_elements(70) if blas else np.errstate():
        with pytest.raises(ValueError, match=r"x holds a non-finite value \(NaN or inf\) in row \(1, 2\)"):
            er.pack_signatures(x, planes, offset=offset)
        got = er.pack_signatures(x, planes, offset=offset, check_finite=False)
    finite = np.isfinite(x).all(-1)
    np.testing.assert_array_equal(got[finite], er.pack_signatures(x[finite], planes, offset=offset))
    np.testing.assert_array_equal(got[1, 2], np.zeros(2, np.uint64))  # a NaN projection gives 0


@pytest.mark.parametrize(
    ("offset", "error", "message"),
    [
        (np.zeros(71), ValueError, r"offset must have shape \(bits,\) = \(70,\) to match planes \(5, 70\), "
                                   r"got shape \(71,\)"),
        (np.zeros((1, 70)), ValueError, r"offset must have shape \(bits,\) = \(70,\).*got shape \(1, 70\)"),
        (np.float64(1.0), ValueError, r"offset must have shape \(bits,\) = \(70,\).*got shape \(\)"),
        (np.zeros(70, np.int64), TypeError, "offset must have dtype float32 or float64, got dtype int64"),
        (np.zeros(70, np.float16), TypeError, "offset must have dtype float32 or float64, got dtype float16"),
        (np.zeros(70, np.complex128), TypeError, "offset must have dtype float32 or float64, got dtype complex128"),
        (np.r_[np.zeros(69), np.nan], ValueError, "offset must be finite, got a NaN or an infinity"),
        (np.r_[np.inf, np.zeros(69)].astype(np.float32), ValueError, "offset must be finite"),
    ],
)
def test_offset_errors_name_it(offset: Any, error: type, message: str) -> None:
    x, planes = np.ones((2, 5)), er.hyperplanes(5, 70)
    with pytest.raises(error, match=message):
        er.pack_signatures(x, planes, offset=offset)


def test_offset_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        er.pack_signatures(np.ones((2, 5)), er.hyperplanes(5, 70), True, np.zeros(70))  # type: ignore[misc]


def test_float16_x_projects_in_float32_with_the_offset() -> None:
    rng = np.random.default_rng(7)
    x, planes, offset = gaussian(rng, (6, 8), np.float16), er.hyperplanes(8, 64), gaussian(rng, (64,), np.float64)
    want = er.pack_signatures(x.astype(np.float32), planes, offset=offset.astype(np.float32))
    np.testing.assert_array_equal(er.pack_signatures(x, planes, offset=offset), want)


# ----------------------------------------------------------------------------- torch

torch_only = pytest.mark.skipif(SIM, reason="torch tests run in the CPU process")


def _torch() -> Any:
    torch = pytest.importorskip("torch")
    import etaretrieval.torch  # noqa: F401

    return torch


@torch_only
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), lead=LEAD, dim=st.integers(1, 12), bits=BITS, xdtype=FLOATS, pdtype=FLOATS,
       odtype=FLOATS, blas=st.booleans())
def test_torch_op_equals_numpy(
    pack_chunk_elements: Any, seed: int, lead: tuple[int, ...], dim: int, bits: int, xdtype: Any, pdtype: Any,
    odtype: Any, blas: bool,
) -> None:
    """Request-sized: the NumPy driver itself (bit for bit); table-sized (torch.matmul): equal away from zero."""
    torch = _torch()
    from etaretrieval.torch import pack_signatures

    rng = np.random.default_rng(seed)
    x, planes, offset = gaussian(rng, lead + (dim,), xdtype), gaussian(rng, (dim, bits), pdtype), \
        gaussian(rng, (bits,), odtype)
    tx, tp, to = torch.from_numpy(x), torch.from_numpy(planes), torch.from_numpy(offset.copy())
    if blas:
        with pack_chunk_elements(int(rng.integers(1, 300))):
            got = pack_signatures(tx, tp, offset=to).numpy().view(np.uint64)
        proj, clear = reference(x, planes, offset)
        np.testing.assert_array_equal(bits_of(got, bits)[clear], (proj > 0)[clear])
        x, planes, offset = (integer_valued(rng, a.shape, a.dtype) for a in (x, planes, offset))
        with pack_chunk_elements(13):
            got = pack_signatures(torch.from_numpy(x), torch.from_numpy(planes), offset=torch.from_numpy(offset))
        np.testing.assert_array_equal(got.numpy().view(np.uint64), er.pack_signatures(x, planes, offset=offset))
    else:
        got = torch.ops.etaretrieval.pack_signatures(tx, tp, True, None, to)  # the op: a fifth positional argument
        np.testing.assert_array_equal(got.numpy().view(np.uint64), er.pack_signatures(x, planes, offset=offset))
        assert torch.equal(to, torch.from_numpy(offset))  # not modified


@torch_only
def test_torch_schema_fake_kernel_and_opcheck() -> None:
    torch = _torch()
    ops = torch.ops.etaretrieval
    assert str(ops.pack_signatures.default._schema).endswith("Tensor? valid=None, Tensor? offset=None) -> Tensor")
    x, planes, offset = torch.randn(3, 5, 8), torch.randn(8, 70), torch.randn(70)
    meta = ops.pack_signatures(x.to("meta"), planes.to("meta"), offset=offset.to("meta"))
    assert meta.shape == (3, 5, 2) and meta.dtype == torch.int64 and meta.device.type == "meta"
    with pytest.raises(ValueError, match=r"offset must have shape \(bits,\) = \(70,\)"):
        ops.pack_signatures(x.to("meta"), planes.to("meta"), offset=offset[:3].to("meta"))
    valid = torch.rand(3, 5) < 0.5
    for args, kwargs in [
        ((x.requires_grad_(), planes), {"offset": offset}),
        ((x.detach().transpose(0, 1).double(), planes[:, :3]), {"check_finite": False, "offset": offset[:3].double()}),
        ((x.detach().half(), planes), {"valid": valid, "offset": offset}),
    ]:
        torch.library.opcheck(ops.pack_signatures, args, kwargs)


@torch_only
def test_torch_compile_with_offset() -> None:
    torch = _torch()
    x, planes, offset = torch.randn(4, 6, 8), torch.randn(8, 100), torch.randn(100)

    def fn(x: Any, planes: Any, offset: Any) -> Any:
        return torch.ops.etaretrieval.pack_signatures(x * 2, planes, offset=offset + 1)

    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x, planes, offset), fn(x, planes, offset))


@torch_only
def test_torch_errors_name_offset() -> None:
    torch = _torch()
    from etaretrieval.torch import pack_signatures

    x, planes = torch.ones(2, 5), torch.randn(5, 70)
    cases = [
        (torch.zeros(71), ValueError, r"offset must have shape \(bits,\) = \(70,\) to match planes \(5, 70\)"),
        (torch.zeros(70, dtype=torch.int64), TypeError, "offset must have dtype torch.float32 or torch.float64"),
        (torch.zeros(70, dtype=torch.float16), TypeError, "offset must have dtype torch.float32 or torch.float64"),
        (torch.zeros(70, device="meta"), ValueError, "offset must be on the device of the other inputs"),
        (torch.full((70,), float("nan")), ValueError, "offset must be finite, got a NaN or an infinity"),
        (np.zeros(70), TypeError, "offset"),
    ]
    for offset, error, message in cases:
        with pytest.raises(error, match=message):
            pack_signatures(x, planes, offset=offset)
    with pytest.raises(TypeError):
        pack_signatures(x, planes, True, None, torch.zeros(70))  # type: ignore[misc]  # keyword-only
    old = er.config.PACK_BLAS_WORK
    er.config.PACK_BLAS_WORK = 0  # the table-sized path checks the offset too
    try:
        with pytest.raises(ValueError, match="offset must be finite"):
            pack_signatures(x, planes, offset=torch.full((70,), float("inf")))
    finally:
        er.config.PACK_BLAS_WORK = old


@torch_only
@pytest.mark.parametrize("blas", [False, True])
def test_torch_valid_rows_with_offset(pack_chunk_elements: Any, blas: bool) -> None:
    torch = _torch()
    from etaretrieval.torch import pack_signatures

    x, planes, offset = torch.randn(3, 4, 6), torch.randn(6, 64), torch.randn(64)
    valid = torch.ones(3, 4, dtype=torch.bool)
    x[1, 2, 0], valid[1, 2] = float("nan"), False
    with pack_chunk_elements(64) if blas else np.errstate():
        got = pack_signatures(x, planes, valid=valid, offset=offset)
        with pytest.raises(ValueError, match=r"row \(1, 2\)"):
            pack_signatures(x, planes, offset=offset)
        want = pack_signatures(x[valid], planes, offset=offset)
    assert torch.equal(got[valid], want)


@torch_only
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), lead=st.sampled_from([(), (0,), (3,), (2, 5)]), dim=st.integers(1, 12),
       bits=BITS, xtype=st.sampled_from(["float32", "float64", "float16", "bfloat16"]), ptype=FLOATS, otype=FLOATS)
def test_aten_form_equals_the_op(
    seed: int, lead: tuple[int, ...], dim: int, bits: int, xtype: str, ptype: Any, otype: Any
) -> None:
    """Multiples of 1/4: every product and sum is exact, so both give the same bits whatever their order."""
    torch = _torch()
    from etaretrieval.torch import aten

    rng = np.random.default_rng(seed)

    def dyadic(shape: tuple[int, ...], dtype: Any) -> Any:
        return torch.from_numpy(rng.integers(-16, 17, size=shape) / 4).to(dtype)

    x = dyadic(lead + (dim,), getattr(torch, xtype))
    planes, offset = dyadic((dim, bits), getattr(torch, np.dtype(ptype).name)), \
        dyadic((bits,), getattr(torch, np.dtype(otype).name))
    want = torch.ops.etaretrieval.pack_signatures(x, planes, offset=offset)
    assert torch.equal(aten.pack_signatures(x, planes, offset=offset), want)


@torch_only
#: run_decompositions deep-copies a pytree spec of a class torch 2.13 deprecates; not ours to fix.
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning")
def test_aten_form_asserts_a_finite_offset_and_decomposes() -> None:
    torch = _torch()
    from etaretrieval.torch import aten, decompositions

    x, planes = torch.randn(4, 8), torch.randn(8, 70)
    with pytest.raises(RuntimeError, match="offset must be finite"):
        aten.pack_signatures(x, planes, offset=torch.full((70,), float("-inf")))
    with pytest.raises(ValueError, match=r"offset must have shape \(bits,\)"):
        aten.pack_signatures(x, planes, offset=torch.zeros(3))

    class Hash(torch.nn.Module):
        def forward(self, x: Any, planes: Any, offset: Any) -> Any:
            return torch.ops.etaretrieval.pack_signatures(x, planes, offset=offset)

    x = torch.from_numpy(np.random.default_rng(8).integers(-8, 9, size=(4, 8)) / 4).float()
    planes, offset = torch.round(planes * 4) / 4, torch.round(torch.randn(70) * 4) / 4
    program = torch.export.export(Hash(), (x, planes, offset)).run_decompositions(decompositions())
    assert not any(str(n.target).startswith("etaretrieval") for n in program.graph.nodes)
    assert torch.equal(program.module()(x, planes, offset), Hash()(x, planes, offset))


@torch_only
@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), bias=st.booleans(), dtype=st.sampled_from(["float32", "float64"]))
def test_hash_rows_of_affine_planes_is_the_wider_copy_bit_for_bit(seed: int, bias: bool, dtype: str) -> None:
    """``hash_rows`` passes the affine planes' last row as the offset: the signatures of ``[x, 1]``, no copy."""
    torch = _torch()
    from etaretrieval.torch._planes import fold, hash_rows

    gen = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    linear = torch.nn.Linear(8, 8, bias=bias).to(dt)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(8, 8, generator=gen, dtype=dt))
    folded = fold(torch.randn(8, 100, generator=gen, dtype=dt), linear)
    x = torch.randn(3, 20, 8, generator=gen, dtype=dt)[:, ::2]  # non-contiguous
    ones = torch.cat([x, torch.ones(3, 10, 1, dtype=dt)], dim=-1)
    assert torch.equal(hash_rows(x, folded), torch.ops.etaretrieval.pack_signatures(ones, folded))


# ----------------------------------------------------------------------------- CUDA (simulator)


def _dev(a: Any) -> Any:
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(a))


@pytest.mark.cudasim
@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2**32 - 1), lead=st.sampled_from([(), (0,), (3,), (2, 3)]), dim=st.integers(1, 5),
       bits=st.sampled_from([1, 63, 64, 65, 130]), xdtype=FLOATS, pdtype=FLOATS, odtype=FLOATS)
def test_cuda_offset_equals_the_cpu_bit_for_bit(
    seed: int, lead: tuple[int, ...], dim: int, bits: int, xdtype: Any, pdtype: Any, odtype: Any
) -> None:
    """Both sum in order and add the offset last (converted to the accumulator's dtype on the device)."""
    rng = np.random.default_rng(seed)
    x, planes, offset = gaussian(rng, lead + (dim,), xdtype), gaussian(rng, (dim, bits), pdtype), \
        gaussian(rng, (bits,), odtype)
    want = er.pack_signatures(x, planes, offset=offset)
    got = er.pack_signatures(_dev(x), _dev(planes), offset=_dev(offset))
    np.testing.assert_array_equal(got.copy_to_host(), want)
    x, planes, offset = (integer_valued(rng, a.shape, a.dtype) for a in (x, planes, offset))
    exact = er.pack_signatures(_dev(x), _dev(planes), offset=_dev(offset)).copy_to_host()
    np.testing.assert_array_equal(exact, er.pack_signatures(x, planes, offset=offset))


@pytest.mark.cudasim
def test_cuda_offset_into_and_errors() -> None:
    from etaretrieval.cuda import pack_signatures_into

    rng = np.random.default_rng(9)
    x, planes, offset = gaussian(rng, (4, 6), np.float32), gaussian(rng, (6, 70), np.float32), gaussian(rng, (70,),
                                                                                                          np.float64)
    out = _dev(np.zeros((4, 2), np.uint64))
    pack_signatures_into(_dev(x), _dev(planes), out, offset=_dev(offset))
    np.testing.assert_array_equal(out.copy_to_host(), er.pack_signatures(x, planes, offset=offset))
    pack_signatures_into(_dev(x), _dev(planes), out)
    np.testing.assert_array_equal(out.copy_to_host(), er.pack_signatures(x, planes))
    with pytest.raises(ValueError, match="offset is host data"):
        er.pack_signatures(_dev(x), _dev(planes), offset=offset)
    with pytest.raises(ValueError, match="offset is a device"):
        er.pack_signatures(x, planes, offset=_dev(offset))
    with pytest.raises(ValueError, match=r"offset must have shape \(bits,\) = \(70,\)"):
        er.pack_signatures(_dev(x), _dev(planes), offset=_dev(offset[:5]))
    with pytest.raises(TypeError, match="offset must have dtype float32 or float64"):
        er.pack_signatures(_dev(x), _dev(planes), offset=_dev(offset.astype(np.int32)))


# ----------------------------------------------------------------------------- orthogonal hyperplanes


@settings(max_examples=25)
@given(dim=st.integers(1, 40), bits=st.integers(1, 130), seed=st.integers(0, 2**63))
def test_orthogonal_hyperplanes_groups(dim: int, bits: int, seed: int) -> None:
    """Each group of ``dim`` planes is orthogonal; every plane keeps its length, the first of a group its direction."""
    plain = er.hyperplanes(dim, bits, seed=seed).astype(np.float64)
    ortho = er.hyperplanes(dim, bits, seed=seed, orthogonal=True)
    assert ortho.shape == (dim, bits) and ortho.dtype == np.float32 and np.isfinite(ortho).all()
    np.testing.assert_array_equal(ortho, er.hyperplanes(dim, bits, seed=seed, orthogonal=True))
    o = ortho.astype(np.float64)
    lengths = np.linalg.norm(o, axis=0)
    np.testing.assert_allclose(lengths, np.linalg.norm(plain, axis=0), rtol=1e-5)
    for lo in range(0, bits, dim):
        unit = o[:, lo : lo + dim] / lengths[lo : lo + dim]
        np.testing.assert_allclose(unit.T @ unit, np.eye(unit.shape[1]), atol=1e-5)
        np.testing.assert_allclose(o[:, lo], plain[:, lo], rtol=1e-5, atol=1e-6)


def test_orthogonal_hyperplanes_estimate_the_angle_with_less_variance() -> None:
    """Super-bit LSH: over 300 seeds, the Hamming distance of two vectors varies less with orthogonal planes."""
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((2, 16))
    spread = {}
    for orthogonal in (False, True):
        dist = [er.hamming(*er.pack_signatures(np.stack([a, b]), er.hyperplanes(16, 16, s, orthogonal=orthogonal)))
                for s in range(300)]
        spread[orthogonal] = float(np.var(dist))
    assert spread[True] < 0.8 * spread[False], spread


def test_orthogonal_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="orthogonal must be a bool, got int"):
        er.hyperplanes(4, 8, orthogonal=1)  # type: ignore[arg-type]
