"""The torch.ops.etaretrieval custom operators and the HammingTopK autograd Function."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import etaretrieval as er  # noqa: E402
from etaretrieval.torch import HammingTopK, _ops  # noqa: E402

ops = torch.ops.etaretrieval

#: Inductor uses a deprecated torch.jit API internally (torch 2.13); not ours to fix.
TORCH_INTERNAL_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def signatures(rng: np.random.Generator, shape: tuple[int, ...], bits: int | None = None) -> np.ndarray:
    """Random uint64 signatures; with ``bits`` only the low bits of one word vary (many ties)."""
    if bits is None:
        return rng.integers(0, 2**64, size=shape, dtype=np.uint64)
    return rng.integers(0, 2**bits, size=shape, dtype=np.uint64)


def t64(a: np.ndarray) -> torch.Tensor:
    """The int64 tensor holding the bit patterns of uint64 ``a`` (zero copy)."""
    return torch.from_numpy(np.ascontiguousarray(a).view(np.int64))


@st.composite
def topk_cases(draw: st.DrawFn) -> dict:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    batch, length, words = draw(st.integers(0, 5)), draw(st.integers(0, 40)), draw(st.integers(1, 3))
    few = draw(st.sampled_from([None, 3]))  # 3 bits: heavy ties exercise the tie order
    query = signatures(rng, (batch, words), few)
    shared = draw(st.booleans())
    keys = signatures(rng, (length, words) if shared else (batch, length, words), few)
    valid = draw(st.sampled_from(["all", "lengths", "mask", "shared_mask"]))
    lengths = rng.integers(0, length + 1, size=batch) if valid == "lengths" else None
    mask = None
    if valid == "mask":
        mask = rng.random((batch, length)) < 0.7
    elif valid == "shared_mask":
        mask = rng.random(length) < 0.7
    return dict(query=query, keys=keys, k=draw(st.integers(0, length + 3)), lengths=lengths, mask=mask)


def as_torch(case: dict) -> dict:
    out = {}
    for name, value in case.items():
        if isinstance(value, np.ndarray):
            out[name] = t64(value) if value.dtype == np.uint64 else torch.from_numpy(value)
        else:
            out[name] = value
    return out


@settings(deadline=None, max_examples=30)
@given(topk_cases())
def test_topk_hamming_equals_numpy_api(case: dict) -> None:
    want_idx, want_dist = er.topk_hamming(case["query"], case["keys"], case["k"],
                                          lengths=case["lengths"], mask=case["mask"])
    c = as_torch(case)
    idx, dist = ops.topk_hamming(c["query"], c["keys"], c["k"], lengths=c["lengths"], mask=c["mask"])
    assert idx.dtype == torch.int64 and dist.dtype == torch.int32
    np.testing.assert_array_equal(idx.numpy(), want_idx)
    np.testing.assert_array_equal(dist.numpy(), want_dist)


@settings(deadline=None, max_examples=30)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 4),
    length=st.integers(0, 30),
    words=st.integers(1, 2),
    n=st.integers(1, 12),
    id_dtype=st.sampled_from([np.int64, np.int32, np.int16, np.uint8]),
    shared=st.booleans(),
    use_pad=st.booleans(),
)
def test_topk_hamming_lookup_equals_numpy_api(
    seed: int, batch: int, length: int, words: int, n: int, id_dtype: type, shared: bool, use_pad: bool
) -> None:
    rng = np.random.default_rng(seed)
    query, table = signatures(rng, (batch, words), 4), signatures(rng, (n, words), 4)
    ids = rng.integers(0, n, size=(length,) if shared else (batch, length)).astype(id_dtype)
    pad = int(ids.flat[0]) if use_pad and ids.size else None
    mask = rng.random((batch, length)) < 0.8
    k = int(rng.integers(0, length + 2))
    want = er.topk_hamming_lookup(query, ids, table, k, mask=mask, padding_id=pad)
    got = ops.topk_hamming_lookup(t64(query), torch.from_numpy(ids), t64(table), k,
                                  mask=torch.from_numpy(mask), padding_id=pad)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [1, 64, 100, 1024])
def test_pack_signatures_equals_numpy_api(dtype: torch.dtype, bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(3, 5, 8, generator=gen, dtype=dtype)
    planes = torch.from_numpy(er.hyperplanes(8, bits, seed=1))
    sig = ops.pack_signatures(x, planes)
    assert sig.dtype == torch.int64 and sig.shape == (3, 5, (bits + 63) // 64)
    want = er.pack_signatures(x.numpy(), planes.numpy())
    np.testing.assert_array_equal(sig.numpy().view(np.uint64), want)


def test_pack_signatures_rejects_non_finite_unless_told() -> None:
    x = torch.ones(4, 2)
    x[2, 1] = float("nan")
    planes = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"row \(2,\)"):
        ops.pack_signatures(x, planes)
    assert ops.pack_signatures(x, planes, check_finite=False)[2].item() == 0


def test_pack_accepts_inputs_that_require_grad() -> None:
    x = torch.randn(4, 8, requires_grad=True)
    planes = torch.randn(8, 16, requires_grad=True)
    sig = ops.pack_signatures(x, planes)
    assert not sig.requires_grad
    np.testing.assert_array_equal(sig.numpy().view(np.uint64), er.pack_signatures(x.detach().numpy(),
                                                                                   planes.detach().numpy()))


def test_non_contiguous_inputs_are_read_in_place() -> None:
    rng = np.random.default_rng(5)
    big = t64(signatures(rng, (6, 2, 40, 3), 5))
    keys = big[::2, 1, ::2, 1:]  # (3, 20, 2), strided on every axis
    query = t64(signatures(rng, (3, 4), 5))[:, ::2]
    mask = torch.from_numpy(rng.random((20, 3)) < 0.6).t()
    assert not (keys.is_contiguous() or query.is_contiguous() or mask.is_contiguous())
    # the kernels see views of the same memory, no copies
    assert _ops._uint64(keys).__array_interface__["data"][0] == keys.data_ptr()
    assert _ops._numpy(mask).__array_interface__["data"][0] == mask.data_ptr()
    idx, dist = ops.topk_hamming(query, keys, 5, mask=mask)
    want = er.topk_hamming(query.contiguous().numpy().view(np.uint64),
                           keys.contiguous().numpy().view(np.uint64), 5, mask=mask.contiguous().numpy())
    np.testing.assert_array_equal(idx.numpy(), want[0])
    np.testing.assert_array_equal(dist.numpy(), want[1])

    ids = torch.from_numpy(rng.integers(0, 9, size=(40, 3))).t()[:, ::2]  # (3, 20), transposed and strided
    table = t64(signatures(rng, (9, 4), 5))[:, 1:3]
    got = ops.topk_hamming_lookup(query, ids, table, 4)
    want = er.topk_hamming_lookup(query.contiguous().numpy().view(np.uint64), ids.numpy(),
                                  table.contiguous().numpy().view(np.uint64), 4)
    np.testing.assert_array_equal(got[0].numpy(), want[0])

    x = torch.randn(8, 5).t()  # (5, 8) with strides (1, 5)
    planes = torch.randn(4, 70)
    np.testing.assert_array_equal(ops.pack_signatures(x[:, ::2], planes).numpy().view(np.uint64),
                                  er.pack_signatures(x[:, ::2].contiguous().numpy(), planes.numpy()))


def test_inputs_are_not_modified_and_outputs_are_new() -> None:
    rng = np.random.default_rng(0)
    query, keys = t64(signatures(rng, (2, 1), 3)), t64(signatures(rng, (2, 9, 1), 3))
    before = (query.clone(), keys.clone())
    idx, dist = ops.topk_hamming(query, keys, 4)
    assert torch.equal(query, before[0]) and torch.equal(keys, before[1])
    assert idx.data_ptr() not in (query.data_ptr(), keys.data_ptr())


def opcheck_cases() -> list[tuple[object, tuple, dict]]:
    rng = np.random.default_rng(1)
    query, keys = t64(signatures(rng, (3, 2))), t64(signatures(rng, (3, 7, 2)))
    ids, table = torch.from_numpy(rng.integers(0, 10, size=(3, 7))), t64(signatures(rng, (10, 2)))
    mask = torch.from_numpy(rng.random((3, 7)) < 0.7)
    x = torch.randn(3, 5, 8, requires_grad=True)
    return [
        (ops.pack_signatures, (x, torch.randn(8, 70)), {}),
        (ops.pack_signatures, (x.detach().transpose(0, 1).double(), torch.randn(8, 3)), {"check_finite": False}),
        (ops.topk_hamming, (query, keys, 4), {"mask": mask}),
        (ops.topk_hamming, (query, keys[0], 9), {"lengths": torch.tensor([0, 3, 7])}),
        (ops.topk_hamming_lookup, (query, ids, table, 4), {"mask": mask, "padding_id": 3}),
        (ops.topk_hamming_lookup, (query, ids[0], table, 0), {}),
    ]


@pytest.mark.parametrize("case", range(6))
def test_opcheck(case: int) -> None:
    op, args, kwargs = opcheck_cases()[case]
    torch.library.opcheck(op, args, kwargs)


def test_fake_kernels_give_shapes_on_meta() -> None:
    query = torch.empty(5, 2, dtype=torch.int64, device="meta")
    idx, dist = ops.topk_hamming(query, torch.empty(40, 2, dtype=torch.int64, device="meta"), 7)
    assert idx.shape == dist.shape == (5, 7) and (idx.dtype, dist.dtype) == (torch.int64, torch.int32)
    idx, _ = ops.topk_hamming_lookup(query, torch.empty(5, 40, dtype=torch.int32, device="meta"),
                                     torch.empty(100, 2, dtype=torch.int64, device="meta"), 3)
    assert idx.shape == (5, 3) and idx.device.type == "meta"
    sig = ops.pack_signatures(torch.empty(4, 6, 8, device="meta"), torch.empty(8, 129, device="meta"))
    assert sig.shape == (4, 6, 3) and sig.dtype == torch.int64


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_compiled_fullgraph_equals_eager() -> None:
    def retrieve(target: torch.Tensor, seq: torch.Tensor, ids: torch.Tensor, planes: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        query = ops.pack_signatures(target, planes)
        keys = ops.pack_signatures(seq, planes)
        table = ops.pack_signatures(seq[0], planes)
        plain = ops.topk_hamming(query, keys, 5, mask=mask)
        fused = ops.topk_hamming_lookup(query, ids, table, 5, mask=mask, padding_id=0)
        return plain + fused

    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(3, 8, generator=gen), torch.randn(3, 30, 8, generator=gen),
            torch.randint(0, 30, (3, 30), generator=gen), torch.randn(8, 64, generator=gen),
            torch.rand(3, 30, generator=gen) < 0.8)
    compiled = torch.compile(retrieve, fullgraph=True)
    for got, want in zip(compiled(*args), retrieve(*args)):
        assert torch.equal(got, want)


def test_no_kernel_on_other_devices_is_a_clear_error() -> None:
    x = torch.empty(2, 3, dtype=torch.int64, device="meta")
    with pytest.raises(ValueError, match="no kernel for device meta"):
        _ops._require_cpu("topk_hamming", x)


@pytest.mark.parametrize(
    "name",
    ["pack_signatures", "topk_hamming", "topk_hamming_lookup", "topk_hamming_ragged", "topk_hamming_lookup_ragged"],
)
def test_cuda_kernels_are_registered(name: str) -> None:
    """Importing the plugin gives every op a CUDA kernel (run by the gpu-marked tests on a GPU)."""
    qualname = f"etaretrieval::{name}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA")
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "XLA")


def _i64(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.int64)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ops.topk_hamming(_i64(2, 1).int(), _i64(2, 5, 1), 3), TypeError, "query must hold packed"),
        (lambda: ops.topk_hamming(_i64(2, 1), _i64(2, 5, 1).double(), 3), ValueError, "keys must hold packed"),
        (lambda: ops.topk_hamming(_i64(2), _i64(2, 5, 1), 3), ValueError, r"query must have shape \(B, W\)"),
        (lambda: ops.topk_hamming(_i64(2, 1), _i64(2, 5, 2), 3), ValueError, "keys must have W = 1"),
        (lambda: ops.topk_hamming(_i64(2, 1), _i64(3, 5, 1), 3), ValueError, r"keys must have shape \(2, L, 1\)"),
        (lambda: ops.topk_hamming(_i64(2, 17), _i64(2, 5, 17), 3), ValueError, "1..16 signature words"),
        (lambda: ops.topk_hamming(_i64(2, 1), _i64(2, 5, 1), -1), ValueError, "k must be >= 0"),
        (lambda: ops.topk_hamming(_i64(2, 1), _i64(2, 5, 1), 3, _i64(2), torch.ones(2, 5, dtype=torch.bool)),
         ValueError, "either lengths or mask"),
        (lambda: ops.topk_hamming(_i64(2, 1), _i64(2, 5, 1), 3, mask=torch.ones(2, 5, dtype=torch.complex64)),
         TypeError, "mask must have dtype torch.bool or a real numeric dtype"),
        (lambda: ops.topk_hamming(_i64(2, 1), _i64(2, 5, 1), 3, mask=torch.ones(2, 4, dtype=torch.bool)),
         ValueError, r"mask must have shape \(2, 5\) or \(5,\)"),
        (lambda: ops.topk_hamming(_i64(2, 1), _i64(2, 5, 1), 3, lengths=torch.ones(2)), TypeError,
         "lengths must have an integer dtype"),
        (lambda: ops.topk_hamming(_i64(2, 1), _i64(2, 5, 1), 3, lengths=torch.tensor([1, 6])), ValueError,
         "lengths must lie in 0..5"),
        (lambda: ops.topk_hamming(_i64(2, 1), _i64(2, 5, 1).to("meta"), 3), ValueError,
         "keys must be on the device of the other inputs"),
        (lambda: ops.topk_hamming_lookup(_i64(2, 1), torch.ones(2, 5), _i64(4, 1), 3), TypeError,
         "ids must have an integer dtype"),
        (lambda: ops.topk_hamming_lookup(_i64(2, 1), _i64(3, 5), _i64(4, 1), 3), ValueError, "ids must have shape"),
        (lambda: ops.topk_hamming_lookup(_i64(2, 1), _i64(2, 5), _i64(4, 2), 3), ValueError, "table must have W = 1"),
        (lambda: ops.topk_hamming_lookup(_i64(2, 1), torch.full((2, 5), 4), _i64(4, 1), 3), IndexError,
         r"ids\[0, 0\] = 4 is outside"),
        (lambda: ops.topk_hamming_lookup(_i64(2, 1), _i64(2, 5).int(), _i64(4, 1), 3, padding_id=2**40), ValueError,
         "padding_id must be representable"),
        (lambda: ops.pack_signatures(torch.ones(3, 4, dtype=torch.int32), torch.ones(4, 8)), TypeError,
         "x must have dtype"),
        (lambda: ops.pack_signatures(torch.ones(3, 4), torch.ones(4, 8, dtype=torch.int32)), TypeError,
         "planes must have dtype"),
        (lambda: ops.pack_signatures(torch.ones(3, 5), torch.ones(4, 8)), ValueError,
         r"x must have shape \(\.\.\., 4\)"),
        (lambda: ops.pack_signatures(torch.ones(3, 4), torch.ones(4, 1025)), ValueError, "bits <= 1024"),
        # the dispatcher checks the schema before any kernel runs
        (lambda: ops.pack_signatures(np.ones((3, 4)), torch.ones(4, 8)), RuntimeError, "argument 'x'"),
    ],
)
def test_clear_errors(call: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def test_empty_batch_with_huge_k() -> None:
    idx, dist = ops.topk_hamming_lookup(_i64(0, 1), _i64(0, 5), _i64(4, 1), 10**12)
    assert idx.shape == dist.shape == (0, 10**12)


def test_registration_is_guarded() -> None:
    """Defining an op that exists wraps the registered op's default overload, as the first definition does.

    (The overload packet itself, returned once, broke ``torch.compile`` of the
    front ends after the doctests had imported the module again.)
    """
    again = _ops._define("topk_hamming", _ops._topk_fake)(lambda *args: None)
    assert not isinstance(again, torch._ops.OpOverloadPacket) and type(again) is type(_ops._topk_padded)
    rng = np.random.default_rng(0)
    query, keys = t64(signatures(rng, (2, 1), 3)), t64(signatures(rng, (2, 6, 1), 3))
    assert torch.equal(again(query, keys, 2)[0], ops.topk_hamming(query, keys, 2)[0])  # the op runs, not the lambda
    compiled = torch.compile(lambda q, kk: again(q, kk, 2), backend="eager", fullgraph=True)
    assert torch.equal(compiled(query, keys)[0], ops.topk_hamming(query, keys, 2)[0])


def test_hamming_topk_function() -> None:
    gen = torch.Generator().manual_seed(3)
    seq = torch.randn(3, 25, 8, generator=gen, requires_grad=True)
    target = torch.randn(3, 8, generator=gen, requires_grad=True)
    planes = torch.randn(8, 32, generator=gen)
    mask = torch.rand(3, 25, generator=gen) < 0.5
    index, dist = HammingTopK.apply(target, seq, planes, 6, mask)
    assert not index.requires_grad and not dist.requires_grad
    want = ops.topk_hamming(ops.pack_signatures(target, planes), ops.pack_signatures(seq, planes), 6, mask=mask)
    assert torch.equal(index, want[0]) and torch.equal(dist, want[1])
    # gradients reach the retrieved rows through the gather that follows
    safe = index.clamp(min=0)
    picked = seq.gather(1, safe[..., None].expand(-1, -1, 8)) * (index >= 0)[..., None]
    picked.sum().backward()
    hit = torch.zeros(3, 25, dtype=torch.bool)
    hit.scatter_(1, safe, index >= 0)
    assert torch.equal(seq.grad.abs().sum(-1) > 0, hit)
    assert target.grad is None


@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32, torch.int16])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_lookup_fast_path_and_its_fallbacks_equal_numpy_api(ids_dtype: torch.dtype, layout: str) -> None:
    """The op's fast path (contiguous int64/int32 tensors) and the general path give the NumPy API's results."""
    from etaretrieval.cpu import topk

    gen = torch.Generator().manual_seed(0)
    table = torch.randint(-(2**62), 2**62, (50, 2), generator=gen)
    table[::3] = table[0]  # ties
    ids = torch.randint(0, 50, (3, 40), generator=gen).to(ids_dtype)
    if layout == "strided":
        ids = ids[:, ::2]
    query = table[:3].clone()
    fast = topk.lookup_fast(query.numpy().view(np.uint64), ids.numpy(), table.numpy().view(np.uint64), 5)
    assert (fast is not None) == (layout == "contiguous" and ids_dtype != torch.int16)
    idx, dist = torch.ops.etaretrieval.topk_hamming_lookup(query, ids, table, 5)
    want = er.topk_hamming_lookup(query.numpy().view(np.uint64), ids.numpy(), table.numpy().view(np.uint64), 5)
    np.testing.assert_array_equal(idx.numpy(), want[0])
    np.testing.assert_array_equal(dist.numpy(), want[1])
    bad = ids.clone()
    bad[2, 3] = 50
    with pytest.raises(IndexError, match=r"ids\[2, 3\] = 50 is outside the table's rows \[0, 50\)"):
        torch.ops.etaretrieval.topk_hamming_lookup(query, bad, table, 5)
