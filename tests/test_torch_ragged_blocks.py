"""SDIM and the baseline interest blocks on torch.nested jagged histories, against the padded path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import reference as ref  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_torch_ragged_modules import Largest  # noqa: E402  (records the largest tensor an operation makes)

from etaretrieval import DTypeError  # noqa: E402
from etaretrieval.torch import (  # noqa: E402
    CategoryMatchAttention,
    InnerProductTopKAttention,
    MeanPooling,
    RecentWindowAttention,
    RetrievalAttention,
    SDIMAttention,
    SDIMBlock,
    TimeEncoding,
    TWINAttention,
    select_top,
)
from etaretrieval.torch.sdim import group_codes  # noqa: E402

DIM = 8

#: Inductor uses a deprecated torch.jit API internally (torch 2.13); not ours to fix.
TORCH_INTERNAL_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
#: Dynamo reads ``.grad`` of a jagged tensor made from values that require grad (a non-leaf): torch's warning.
DYNAMO_NESTED_GRAD_WARNING = "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"


def jagged(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return torch.nested.nested_tensor_from_jagged(values, offsets)


@st.composite
def cases(draw: st.DrawFn) -> dict:
    """Ragged rows (empty ones, rows shorter than k, values outside the offsets), integer-valued embeddings (ties)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.integers(1, 4))
    lens = rng.integers(0, 10, size=batch)
    head, tail = draw(st.integers(0, 2)), draw(st.integers(0, 2))  # values of no row before and after the rows
    offsets = head + np.concatenate([[0], np.cumsum(lens)])
    total = int(offsets[-1]) + tail
    ints = draw(st.sampled_from([torch.int32, torch.int64]))
    return dict(
        offsets=torch.from_numpy(offsets).to(draw(st.sampled_from([torch.int32, torch.int64]))),
        values=torch.from_numpy(rng.integers(-2, 3, size=(total, DIM))).double(),
        target=torch.from_numpy(rng.integers(-2, 3, size=(batch, DIM))).double(),
        mask=torch.from_numpy(rng.random(total) < 0.75) if draw(st.booleans()) else None,
        cats=torch.from_numpy(rng.integers(1, 4, size=total)).to(ints),
        target_cat=torch.from_numpy(rng.integers(1, 4, size=batch)).to(ints),
        times=torch.from_numpy(rng.integers(0, 300, size=total)).to(ints),
        request=torch.from_numpy(rng.integers(100, 400, size=batch)).to(ints),
        stamps=draw(st.booleans()),
        k=draw(st.integers(0, 12)),
        timed=draw(st.booleans()),
        perturbed=draw(st.booleans()),
    )


def pad(case: dict, x: torch.Tensor, fill: float = 5) -> torch.Tensor:
    """The rows of flat ``x`` right-padded to the longest with ``fill``; differentiable w.r.t. ``x``."""
    o = case["offsets"].long()
    lens = o[1:] - o[:-1]
    col = torch.arange(int(lens.max()))
    flat = torch.where(col < lens[:, None], o[:-1, None] + col, x.shape[0])  # position T: the filler
    return torch.cat([x, torch.full((1, *x.shape[1:]), fill, dtype=x.dtype)])[flat]


def padded(case: dict, values: torch.Tensor) -> dict:
    """The padded form of the rows (the padding filled with other values)."""
    o = case["offsets"].long()
    inside = torch.arange(int((o[1:] - o[:-1]).max())) < (o[1:] - o[:-1])[:, None]
    mask = inside if case["mask"] is None else inside & pad(case, case["mask"])
    return dict(seq=pad(case, values, 7), mask=mask, seq_cat=pad(case, case["cats"]), seq_time=pad(case, case["times"]))


def as_jagged(case: dict, values: torch.Tensor) -> dict:
    o = case["offsets"]
    return dict(seq=jagged(values, o), mask=None if case["mask"] is None else jagged(case["mask"], o),
                seq_cat=jagged(case["cats"], o), seq_time=jagged(case["times"], o))


def blocks(case: dict) -> list[torch.nn.Module]:
    time = (lambda: TimeEncoding(DIM, n_buckets=12)) if case["timed"] else (lambda: None)
    k = case["k"]
    out = [
        RecentWindowAttention(DIM, k, 2, time=time()),
        CategoryMatchAttention(DIM, k, 2, time=time()),
        InnerProductTopKAttention(DIM, k, 2, time=time()),
        TWINAttention(DIM, k, 2, time=time()),
        MeanPooling(DIM, time=time()),
        SDIMBlock(DIM, 64, 4, seed=1, time=time()),
    ]
    gen = torch.Generator().manual_seed(k)
    for block in out:
        block.double()
        if case["perturbed"] and isinstance(block, RetrievalAttention):
            with torch.no_grad():  # multiples of 1/4 on integer inputs: every score exact, ties exact
                for p in block.attention.parameters():
                    p.add_(torch.randint(-2, 3, p.shape, generator=gen).double() / 4)
    return out


def run(block: torch.nn.Module, case: dict, inputs: dict) -> torch.Tensor:
    context = dict(seq_cat=inputs["seq_cat"], target_cat=case["target_cat"])
    if case["stamps"]:
        context.update(seq_time=inputs["seq_time"], target_time=case["request"])
    return block(case["target"], inputs["seq"], inputs["mask"], **context)


def selected(block: torch.nn.Module, case: dict, inputs: dict) -> torch.Tensor:
    if isinstance(block, TWINAttention):  # scores with the time embeddings
        times = dict(seq_time=inputs["seq_time"], target_time=case["request"]) if case["stamps"] else {}
        return block.retrieve(case["target"], inputs["seq"], inputs["mask"], **times)[0]
    return block.select(case["target"], inputs["seq"], inputs["mask"], seq_cat=inputs["seq_cat"],
                        target_cat=case["target_cat"])[0]


def grads(block: torch.nn.Module, values: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.zeros_like(values) if values.grad is None else values.grad.clone()]
    for p in block.parameters():
        out.append(torch.zeros_like(p) if p.grad is None else p.grad.clone())
        p.grad = None
    values.grad = None
    return out


@settings(deadline=None, max_examples=40)
@given(case=cases())
def test_jagged_blocks_equal_the_padded_rows(case: dict) -> None:
    values = case["values"].clone().requires_grad_(True)
    weights = torch.randn(case["target"].shape[0], DIM, dtype=torch.float64)
    for block in blocks(case):
        results = []
        for form in (padded, as_jagged):
            inputs = form(case, values)
            out = run(block, case, inputs)
            (out * weights).sum().backward()
            results.append((out.detach(), grads(block, values)))
            if isinstance(block, RetrievalAttention):
                results[-1] += (selected(block, case, inputs),)
        (pad_out, pad_grads, *pad_index), (jag_out, jag_grads, *jag_index) = results
        name = type(block).__name__
        torch.testing.assert_close(jag_out, pad_out, rtol=1e-10, atol=1e-12, msg=name)
        for g, w in zip(jag_grads, pad_grads):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=name)
        assert all(torch.equal(j, p) for j, p in zip(jag_index, pad_index)), name
        o = case["offsets"].long()  # values of no row get no gradient
        assert not jag_grads[0][: o[0]].any() and not jag_grads[0][o[-1]:].any()


@settings(deadline=None, max_examples=40)
@given(case=cases())
def test_sdim_attention_jagged_equals_padded(case: dict) -> None:
    sdim = SDIMAttention(DIM, 96, 12, seed=2)
    values = case["values"].clone().requires_grad_(True)
    extra = torch.randn(values.shape[0], 3, dtype=torch.float64, requires_grad=True)
    results = []
    for form, summed in ((padded, pad(case, extra, 0)), (as_jagged, jagged(extra, case["offsets"]))):
        inputs = form(case, values)
        out = sdim(case["target"], inputs["seq"], inputs["mask"], values=summed)
        out.sum().backward()
        results.append((out.detach(), torch.zeros_like(extra) if extra.grad is None else extra.grad.clone()))
        extra.grad = None
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-12)
    assert values.grad is None  # only the values are summed; seq is hashed
    pad_in, jag_in = padded(case, values), as_jagged(case, values)
    buckets = sdim.summarize(jag_in["seq"], jag_in["mask"], jagged(extra, case["offsets"]))
    torch.testing.assert_close(buckets, sdim.summarize(pad_in["seq"], pad_in["mask"], pad(case, extra, 0)),
                               rtol=1e-12, atol=1e-14)
    assert not buckets.requires_grad
    torch.testing.assert_close(sdim.forward_from_buckets(case["target"], buckets), results[1][0], rtol=1e-10,
                               atol=1e-12)


@settings(deadline=None, max_examples=60)
@given(rows=st.lists(st.integers(0, 9), min_size=1, max_size=5), k=st.integers(0, 12), seed=st.integers(0, 2**31 - 1))
def test_select_top_of_a_jagged_score_equals_the_padded_one(rows: list[int], k: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, *np.cumsum(rows).tolist()])
    total = int(offsets[-1])
    score = torch.randint(0, 4, (total,), generator=gen).double()  # many ties
    score[torch.rand(total, generator=gen) < 0.1] = float("-inf")  # never selected
    mask = torch.rand(total, generator=gen) < 0.8
    width = max(rows)
    col = torch.arange(width)
    inside = col < torch.tensor(rows)[:, None]
    flat = torch.where(inside, offsets[:-1, None] + col, total)
    pad_score = torch.cat([score, torch.tensor([9.0], dtype=torch.float64)])[flat]
    pad_mask = inside & torch.cat([mask, torch.tensor([True])])[flat]
    got = select_top(jagged(score, offsets), jagged(mask, offsets), k)
    want = select_top(pad_score, pad_mask, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0].shape == (len(rows), k) and got[0].dtype == torch.int64


@settings(deadline=None, max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), tau=st.sampled_from([1, 3, 5, 7, 12, 16]), rows=st.integers(0, 6),
       groups=st.integers(0, 12))
def test_group_codes_equal_the_reference(seed: int, tau: int, rows: int, groups: int) -> None:
    groups = min(groups, 192 // tau)
    words = max(1, -(-groups * tau // 64))
    sig = np.random.default_rng(seed).integers(0, 2**64, size=(rows, words), dtype=np.uint64)
    got = group_codes(torch.from_numpy(sig.view(np.int64)), tau, groups)
    assert got.shape == (rows, groups) and got.dtype == torch.int64
    assert got.tolist() == ref.sdim_codes(sig, tau, groups * tau).tolist()  # groups straddling words included


def test_no_block_builds_a_batch_by_longest_row_tensor() -> None:
    lens = [4000] + [1] * 255  # B * L_max = 1,024,000 for 4,255 behaviours
    offsets = torch.tensor([0, *np.cumsum(lens).tolist()])
    total = int(offsets[-1])
    case = dict(offsets=offsets, values=torch.randn(total, DIM, dtype=torch.float64),
                target=torch.randn(256, DIM, dtype=torch.float64), mask=torch.rand(total) < 0.9,
                cats=torch.randint(1, 4, (total,)), target_cat=torch.randint(1, 4, (256,)),
                times=torch.arange(total), request=torch.full((256,), total), stamps=True, k=8, timed=True,
                perturbed=False)
    for block in blocks(case) + [SDIMAttention(DIM, 64, 4)]:
        values = case["values"].clone().requires_grad_(True)
        with Largest() as seen:
            inputs = as_jagged(case, values)
            out = run(block, case, inputs) if not isinstance(block, SDIMAttention) else block(
                case["target"].float(), jagged(values.float(), offsets), inputs["mask"])
            out.sum().backward()
        assert seen.numel < 256 * 4000 // 3, (type(block).__name__, seen.numel)


def test_positions_without_timestamps_count_the_valid_newer_behaviours() -> None:
    offsets = torch.tensor([0, 4, 4, 6])
    mask = torch.tensor([True, False, True, True, True, False])
    time = TimeEncoding(DIM, n_buckets=6)
    block = RecentWindowAttention(DIM, 3, 2, time=time).double()
    seq = jagged(torch.randn(6, DIM, dtype=torch.float64), offsets)
    target = torch.randn(3, DIM, dtype=torch.float64)
    index, valid = block.select(target, seq, jagged(mask, offsets))
    assert index.tolist() == [[3, 2, 0], [-1, -1, -1], [0, -1, -1]]
    # the newest valid behaviour has interval 0, the next 1, the third (position 0) 2
    values = seq.values()[torch.tensor([[3, 2, 0], [0, 0, 0], [4, 0, 0]])] * valid[..., None]
    values = values + time.embed(torch.tensor([[0, 1, 2], [0, 0, 0], [0, 0, 0]])) * valid[..., None]
    torch.testing.assert_close(block(target, seq, jagged(mask, offsets)), block.attention.attend(target, values, valid))


def test_batch_of_one_and_of_empty_rows() -> None:
    block = InnerProductTopKAttention(DIM, 3, 2).double()
    target = torch.randn(1, DIM, dtype=torch.float64)
    values = torch.randn(5, DIM, dtype=torch.float64, requires_grad=True)
    one = jagged(values, torch.tensor([0, 5]))
    torch.testing.assert_close(block(target, one), block(target, values.unsqueeze(0)))
    empty = jagged(torch.zeros(0, DIM, dtype=torch.float64), torch.tensor([0, 0, 0]))
    index, valid = block.select(target.expand(2, -1), empty)
    assert index.tolist() == [[-1] * 3] * 2 and not valid.any()
    torch.testing.assert_close(block(target.expand(2, -1), empty), block.attention.out.bias.expand(2, -1))
    assert MeanPooling(DIM)(target.expand(2, -1), empty).abs().sum() == 0
    sdim = SDIMAttention(DIM, 64, 4)
    assert sdim(torch.randn(2, DIM), jagged(torch.zeros(0, DIM), torch.tensor([0, 0, 0]))).abs().sum() == 0


def test_bad_jagged_arguments_are_named() -> None:
    offsets = torch.tensor([0, 2, 5])
    seq = jagged(torch.randn(5, DIM), offsets)
    target = torch.randn(2, DIM)
    cats = jagged(torch.tensor([1, 2, 1, 1, 3]), offsets)
    block = CategoryMatchAttention(DIM, 2, 2)
    with pytest.raises(ValueError, match="seq_cat is required"):
        block(target, seq, target_cat=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="seq_cat must be a torch.nested jagged tensor"):
        block(target, seq, seq_cat=torch.tensor([[1, 2, 1]]), target_cat=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="seq_cat must have the offsets of seq"):
        block(target, seq, seq_cat=jagged(torch.tensor([1, 2, 1, 1, 3]), torch.tensor([0, 3, 5])),
              target_cat=torch.tensor([1, 2]))
    with pytest.raises(DTypeError, match="seq_cat must have an integer dtype"):
        block(target, seq, seq_cat=jagged(torch.ones(5), offsets), target_cat=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"target_cat must have shape \(2,\)"):
        block(target, seq, seq_cat=cats, target_cat=torch.tensor([1]))
    with pytest.raises(ValueError, match="mask must have the offsets of seq"):
        MeanPooling(DIM)(target, seq, jagged(torch.ones(5, dtype=torch.bool), torch.tensor([0, 1, 5])))
    with pytest.raises(ValueError, match="mask must be None or a jagged tensor with the rows of seq"):
        MeanPooling(DIM)(target, seq, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"seq must have shape \(3, j, 8\) \(a jagged tensor\), got 2 rows"):
        RecentWindowAttention(DIM, 2, 2)(torch.randn(3, DIM), seq)
    with pytest.raises(ValueError, match=r"seq must have shape \(2, j, 8\) \(a jagged tensor\)"):
        TWINAttention(DIM, 2, 2)(target, jagged(torch.randn(5, 4), offsets))
    with pytest.raises(ValueError, match=r"target must have shape \(B, 8\)"):
        TWINAttention(DIM, 2, 2)(torch.randn(2, 4), seq)
    with pytest.raises(ValueError, match="seq has bad offsets"):
        MeanPooling(DIM)(target, jagged(torch.randn(5, DIM), torch.tensor([0, 3, 2])))
    with pytest.raises(ValueError, match="seq_time must have the offsets of seq"):
        MeanPooling(DIM, time=TimeEncoding(DIM))(target, seq, seq_time=jagged(torch.arange(5), torch.tensor([0, 4, 5])),
                                                 target_time=torch.tensor([9, 9]))
    with pytest.raises(ValueError, match="pass seq_time and target_time together"):
        SDIMBlock(DIM, 64, 4, time=TimeEncoding(DIM))(target, seq, seq_time=jagged(torch.arange(5), offsets))
    with pytest.raises(ValueError, match="seq is a jagged nested tensor with holes"):
        MeanPooling(DIM)(target, torch.nested.narrow(torch.randn(2, 4, DIM), 1, torch.tensor([0, 1]),
                                                     torch.tensor([2, 3]), layout=torch.jagged))
    sdim = SDIMAttention(DIM, 64, 4)
    with pytest.raises(ValueError, match="values must have the offsets of seq"):
        sdim(target, seq, values=jagged(torch.randn(5, 3), torch.tensor([0, 1, 5])))
    with pytest.raises(ValueError, match=r"target must have shape \(2, 8\)"):
        sdim(torch.randn(3, DIM), seq)
    with pytest.raises(ValueError, match=r"seq must have shape \(B, j, 8\)"):
        sdim(target, jagged(torch.randn(5, 4), offsets))
    with pytest.raises(DTypeError, match="values must have dtype torch.float32 or torch.float64"):
        sdim(target, seq, values=jagged(torch.ones(5, 2, dtype=torch.int64), offsets))


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
@pytest.mark.filterwarnings(DYNAMO_NESTED_GRAD_WARNING)
def test_blocks_compile_fullgraph_on_jagged_histories() -> None:
    offsets = torch.tensor([0, 3, 3, 10, 11])
    values = torch.randn(11, DIM, requires_grad=True)
    seq, target = jagged(values, offsets), torch.randn(4, DIM)
    mask = jagged(torch.rand(11) < 0.8, offsets)
    context = dict(seq_time=jagged(torch.arange(11), offsets), target_time=torch.full((4,), 20),
                   seq_cat=jagged(torch.randint(0, 3, (11,)), offsets), target_cat=torch.tensor([0, 1, 2, 0]))
    for block in (CategoryMatchAttention(DIM, 2, 2, time=TimeEncoding(DIM)), TWINAttention(DIM, 3, 2),
                  MeanPooling(DIM), SDIMBlock(DIM, 64, 4, time=TimeEncoding(DIM))):
        torch._dynamo.reset()
        eager = block(target, seq, mask, **context)
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")(target, seq, mask, **context)
        torch.testing.assert_close(compiled, eager)
        compiled.sum().backward()
    sdim = SDIMAttention(DIM, 64, 4)
    torch.testing.assert_close(torch.compile(sdim, fullgraph=True, backend="aot_eager")(target, seq, mask),
                               sdim(target, seq, mask))
