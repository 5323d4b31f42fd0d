"""SDIM in PyTorch: the custom ops (opcheck, gradcheck, numpy API equality) and SDIMAttention."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import reference as ref  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import etaretrieval as er  # noqa: E402
from etaretrieval.torch import SDIMAttention  # noqa: E402
from etaretrieval.torch.sdim import normalise_mean  # noqa: E402

ops = torch.ops.etaretrieval

#: Inductor uses a deprecated torch.jit API internally (torch 2.13); not ours to fix.
TORCH_INTERNAL_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def t64(a: np.ndarray) -> torch.Tensor:
    """The int64 tensor holding the bit patterns of uint64 ``a``."""
    return torch.from_numpy(np.ascontiguousarray(a).view(np.int64))


@st.composite
def sums_cases(draw: st.DrawFn) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tau = draw(st.sampled_from([1, 3, 4, 12]))
    bits = tau * draw(st.integers(1, max(1, 100 // tau)))
    words = ref.words_for(bits)
    batch, length, d = draw(st.integers(0, 3)), draw(st.integers(0, 12)), draw(st.integers(1, 4))
    query = ref.random_signatures(rng, (batch, words), bits=bits)
    shared = draw(st.booleans())
    keys = ref.random_signatures(rng, (length, words) if shared else (batch, length, words), bits=bits)
    if batch and length:  # copy target signatures onto some positions: every group matches there
        hit = rng.random(keys.shape[:-1]) < 0.4
        keys[hit] = np.broadcast_to(query[0] if shared else query[:, None], keys.shape)[hit]
    values = rng.standard_normal((length, d) if draw(st.booleans()) else (batch, length, d))
    valid = draw(st.sampled_from(["all", "lengths", "mask", "mask1d"]))
    return dict(
        query=query, keys=keys, values=values, tau=tau, bits=bits,
        lengths=rng.integers(0, length + 1, size=batch) if valid == "lengths" else None,
        mask=((rng.random((batch, length) if valid == "mask" else (length,)) < 0.7)
              if valid.startswith("mask") else None),
    )


def torch_args(case: dict, requires_grad: bool = False) -> tuple:
    values = torch.from_numpy(case["values"].copy()).requires_grad_(requires_grad)
    opt = [None if case[n] is None else torch.from_numpy(case[n]) for n in ("lengths", "mask")]
    return (t64(case["query"]), t64(case["keys"]), values, case["tau"], case["bits"], *opt)


def reference_pool(case: dict, values: torch.Tensor) -> torch.Tensor:
    """SDIM written with plain torch operations on the reference codes: the autograd oracle."""
    batch, length = case["query"].shape[0], case["keys"].shape[-2]
    qc = torch.from_numpy(ref.sdim_codes(case["query"], case["tau"], case["bits"]))
    kc = torch.from_numpy(ref.sdim_codes(case["keys"], case["tau"], case["bits"])).expand(batch, length, -1)
    valid = torch.from_numpy(ref.valid_positions(batch, length, lengths=case["lengths"], mask=case["mask"]))
    match = ((kc == qc[:, None, :]) & valid[:, :, None]).to(values.dtype)  # (B, L, G)
    sums = torch.einsum("blg,bld->bgd", match, values.expand(batch, length, -1))
    norm = sums.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, sums / norm.clamp_min(1e-300), 0).mean(1)


@settings(deadline=None, max_examples=30)
@given(sums_cases())
def test_group_sums_op_equals_numpy_api(case: dict) -> None:
    args = torch_args(case)
    got = ops.sdim_group_sums(*args)
    want = er.sdim_group_sums(case["query"], case["keys"], case["values"], case["tau"], bits=case["bits"],
                              lengths=case["lengths"], mask=case["mask"])
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_allclose(normalise_mean(got).numpy(), er.sdim_pool(
        case["query"], case["keys"], case["values"], case["tau"], bits=case["bits"],
        lengths=case["lengths"], mask=case["mask"]), rtol=1e-12, atol=1e-15)


@settings(deadline=None, max_examples=30)
@given(sums_cases())
def test_gradient_matches_autograd_of_the_reference(case: dict) -> None:
    args = torch_args(case, requires_grad=True)
    values = args[2]
    weights = torch.from_numpy(np.random.default_rng(1).standard_normal((case["query"].shape[0], values.shape[-1])))
    (normalise_mean(ops.sdim_group_sums(*args)) * weights).sum().backward()
    mine = values.grad.clone()
    values.grad = None
    (reference_pool(case, values) * weights).sum().backward()
    assert mine.shape == values.shape
    torch.testing.assert_close(mine, values.grad, rtol=1e-10, atol=1e-12)


def small_case(shared_values: bool, valid: str) -> dict:
    rng = np.random.default_rng(7)
    query = ref.random_signatures(rng, (2, 2), bits=72)
    keys = ref.random_signatures(rng, (2, 5, 2), bits=72)
    keys[:, 1] = query  # matches in every group (straddling groups included: tau = 12)
    keys[0, 3, 0] = query[0, 0]  # matches in the groups of word 0
    return dict(
        query=query, keys=keys, values=rng.standard_normal((5, 3) if shared_values else (2, 5, 3)), tau=12, bits=72,
        lengths=np.array([4, 2]) if valid == "lengths" else None,
        mask=np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]], dtype=bool) if valid == "mask" else None,
    )


@pytest.mark.parametrize("shared_values", [False, True])
@pytest.mark.parametrize("valid", ["all", "lengths", "mask"])
def test_gradcheck(shared_values: bool, valid: str) -> None:
    args = torch_args(small_case(shared_values, valid), requires_grad=True)

    def pooled(values: torch.Tensor) -> torch.Tensor:
        return normalise_mean(ops.sdim_group_sums(args[0], args[1], values, *args[3:]))

    assert torch.autograd.gradcheck(pooled, (args[2],))


@pytest.mark.parametrize("valid", ["all", "lengths", "mask"])
def test_opcheck(valid: str) -> None:
    case = small_case(False, valid)
    args = torch_args(case, requires_grad=True)
    torch.library.opcheck(ops.sdim_group_sums, args)
    grad = torch.randn(2, 6, 3, dtype=torch.float64)
    torch.library.opcheck(ops.sdim_group_sums_backward, (args[0], args[1], grad, *args[3:]))
    plain = torch_args(case)
    torch.library.opcheck(ops.sdim_buckets, (plain[1], plain[2], *plain[3:]))
    buckets = ops.sdim_buckets(plain[1], plain[2], *plain[3:])
    torch.library.opcheck(ops.sdim_from_buckets, (plain[0], buckets))
    torch.library.opcheck(ops.sdim_from_buckets, (plain[0], buckets[0]))


def test_serving_ops_equal_numpy_api() -> None:
    case = small_case(True, "mask")
    q, k, v = t64(case["query"]), t64(case["keys"][0]), torch.from_numpy(case["values"])
    mask = torch.from_numpy(case["mask"][0])
    buckets = ops.sdim_buckets(k, v, 12, 72, None, mask)
    want = er.sdim_buckets(case["keys"][0], case["values"], 12, bits=72, mask=case["mask"][0])
    np.testing.assert_array_equal(buckets.numpy(), want)
    np.testing.assert_array_equal(ops.sdim_from_buckets(q, buckets).numpy(),
                                  er.sdim_pool(case["query"], case["keys"][0], case["values"], 12, bits=72,
                                               mask=case["mask"][0]))


def test_op_errors() -> None:
    case = small_case(False, "all")
    q, k, v, tau, bits, _, _ = torch_args(case)
    with pytest.raises(ValueError, match="tau must divide bits: tau = 5 does not divide bits = 72"):
        ops.sdim_group_sums(q, k, v, 5, bits)
    with pytest.raises(ValueError, match=r"tau must be in 1\.\.16, got 0"):
        ops.sdim_group_sums(q, k, v, 0, bits)
    with pytest.raises(er.DTypeError, match="values must have dtype torch.float32 or torch.float64"):
        ops.sdim_group_sums(q, k, v.int(), tau, bits)
    with pytest.raises(ValueError, match=r"values must have shape \(2, 5, d\) or \(5, d\)"):
        ops.sdim_group_sums(q, k, v[:, :4], tau, bits)
    with pytest.raises(er.DTypeError, match="keys must hold packed signatures as dtype torch.int64"):
        ops.sdim_group_sums(q, k.int(), v, tau, bits)
    with pytest.raises(ValueError, match=r"grad must have shape \(2, 6, d\)"):
        ops.sdim_group_sums_backward(q, k, torch.zeros(2, 5, 3, dtype=torch.float64), tau, bits)
    with pytest.raises(ValueError, match="above the limit"):
        ops.sdim_buckets(torch.zeros(3, 16, dtype=torch.int64), torch.zeros(3, 64), 16, 1024)


# ----------------------------------------------------------------------------- module


def test_module_equals_numpy_pool_and_serving_equals_training() -> None:
    _ = torch.manual_seed(0)
    sdim = SDIMAttention(dim=8, bits=100, tau=5, seed=3)
    assert sdim.groups == 20 and "tau=5" in repr(sdim)
    seq = torch.randn(3, 30, 8, dtype=torch.float64)
    values = torch.randn(3, 30, 6, dtype=torch.float64)
    mask = torch.rand(3, 30) < 0.7
    target = seq[:, 4] + 0.1 * torch.randn(3, 8, dtype=torch.float64)
    out = sdim(target, seq, mask, values=values)
    planes = sdim.planes.numpy()
    q, k = er.pack_signatures(target.numpy(), planes), er.pack_signatures(seq.numpy(), planes)
    want = er.sdim_pool(q, k, values.numpy(), 5, bits=100, mask=mask.numpy())
    np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        buckets = sdim.summarize(seq, mask.to(torch.float32), values)  # numeric mask: non-zero is valid
        np.testing.assert_array_equal(sdim.forward_from_buckets(target, buckets).numpy(), want)
        user = sdim.summarize(seq[:1], mask[:1], values[:1])[0]
        cands = torch.randn(7, 8, dtype=torch.float64)
        torch.testing.assert_close(
            sdim.forward_from_buckets(cands, user),
            sdim(cands, seq[:1].expand(7, -1, -1), mask[:1].expand(7, -1), values=values[:1].expand(7, -1, -1)),
        )


def test_module_gradient_reaches_values_not_codes() -> None:
    _ = torch.manual_seed(1)
    sdim = SDIMAttention(dim=4, bits=16, tau=2)
    seq = torch.randn(2, 10, 4, requires_grad=True)
    time = torch.randn(2, 10, 4, requires_grad=True)
    sdim(seq[:, 0].detach(), seq, values=seq + time).sum().backward()
    assert time.grad is not None and time.grad.abs().sum() > 0
    torch.testing.assert_close(seq.grad, time.grad)  # seq reaches the output through the values only
    assert dict(sdim.named_buffers())["planes"].shape == (4, 16)
    assert "planes" in sdim.state_dict()


def test_module_errors() -> None:
    with pytest.raises(ValueError, match="tau must divide bits: tau = 3 does not divide bits = 64"):
        SDIMAttention(8, 64, 3)
    sdim = SDIMAttention(8, 64, 4)
    with pytest.raises(ValueError, match=r"seq must have shape \(B, L, 8\)"):
        sdim(torch.randn(2, 8), torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"target must have shape \(2, 8\)"):
        sdim(torch.randn(3, 8), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 5\)"):
        sdim(torch.randn(2, 8), torch.randn(2, 5, 8), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"values must have shape \(2, 5, d\)"):
        sdim(torch.randn(2, 8), torch.randn(2, 5, 8), values=torch.randn(2, 4, 3))


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_module_compiles_fullgraph() -> None:
    _ = torch.manual_seed(2)
    sdim = SDIMAttention(dim=8, bits=64, tau=4)
    seq = torch.randn(2, 12, 8, requires_grad=True)
    target = torch.randn(2, 8)
    mask = torch.rand(2, 12) < 0.8
    eager = sdim(target, seq, mask)
    compiled = torch.compile(sdim, fullgraph=True, backend="aot_eager")(target, seq, mask)
    torch.testing.assert_close(compiled, eager)
    compiled.sum().backward()
    assert seq.grad is not None
