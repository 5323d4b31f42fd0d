"""ETARetriever, SignatureCache, TargetAttention and ETAAttention."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import etaretrieval as er  # noqa: E402
from etaretrieval.torch import ETAAttention, ETARetriever, SignatureCache, TargetAttention  # noqa: E402

DIM, BITS = 8, 64

#: Inductor uses a deprecated torch.jit API internally (torch 2.13); not ours to fix.
TORCH_INTERNAL_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def batch(seed: int, b: int = 3, length: int = 40, n: int = 25, dtype: torch.dtype = torch.float32):
    """An embedding table, ids (with repeats), their embeddings, targets and a mask."""
    gen = torch.Generator().manual_seed(seed)
    emb = nn.Embedding(n, DIM).to(dtype)
    with torch.no_grad():
        emb.weight.copy_(torch.randn(n, DIM, generator=gen, dtype=dtype))
    ids = torch.randint(0, n, (b, length), generator=gen)
    mask = torch.rand(b, length, generator=gen) < 0.8
    target = torch.randn(b, DIM, generator=gen, dtype=dtype)
    return emb, ids, mask, target


def reference(retriever: ETARetriever, target: torch.Tensor, seq: torch.Tensor,
              mask: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    planes = retriever.planes.numpy()
    query = er.pack_signatures(target.detach().numpy(), planes)
    keys = er.pack_signatures(seq.detach().numpy(), planes)
    return er.topk_hamming(query, keys, retriever.k, mask=None if mask is None else mask.numpy())


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 12), length=st.integers(0, 30), masked=st.booleans())
def test_retriever_equals_numpy_api(seed: int, k: int, length: int, masked: bool) -> None:
    emb, ids, mask, target = batch(seed, length=length)
    seq = emb(ids)
    retriever = ETARetriever(DIM, BITS, k, seed=seed % 7)
    out = retriever(target, seq, mask if masked else None)
    want_idx, _ = reference(retriever, target, seq, mask if masked else None)
    np.testing.assert_array_equal(out.index.numpy(), want_idx)
    assert torch.equal(out.mask, out.index >= 0)
    assert out.values.shape == (3, k, DIM)
    for b in range(3):
        for slot in range(k):
            pos = int(out.index[b, slot])
            row = seq[b, pos] if pos >= 0 else torch.zeros(DIM)
            assert torch.equal(out.values[b, slot], row)


def test_all_paths_agree() -> None:
    emb, ids, mask, target = batch(1, b=4, length=60, n=15)
    retriever = ETARetriever(DIM, BITS, k=10)
    seq = emb(ids)
    cache = SignatureCache(emb, retriever)
    runs = [
        retriever(target, seq, mask),
        retriever(target, seq, mask, seq_ids=ids),
        retriever(target, mask=mask, seq_ids=ids, items=emb.weight),
        retriever(target, mask=mask, seq_ids=ids, cache=cache),
        retriever(target, seq, mask, seq_ids=ids, cache=cache),
    ]
    for out in runs[1:]:
        assert torch.equal(out.index, runs[0].index)
        assert torch.equal(out.mask, runs[0].mask)
        assert torch.equal(out.values, runs[0].values)


def test_short_rows_and_all_padding() -> None:
    emb, ids, _, target = batch(2, b=3, length=10)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, :3] = True  # 3 valid < k
    mask[1] = True
    out = ETARetriever(DIM, BITS, k=5)(target, emb(ids), mask)
    assert out.mask.sum(1).tolist() == [3, 5, 0]
    assert (out.index[0, 3:] == -1).all() and (out.index[2] == -1).all()
    assert set(out.index[0, :3].tolist()) == {0, 1, 2}
    assert (out.values[~out.mask] == 0).all()


def test_gradients_reach_exactly_the_retrieved_rows() -> None:
    emb, ids, mask, target = batch(3, b=3, length=30)
    seq = emb(ids).detach().requires_grad_()
    out = ETARetriever(DIM, BITS, k=6)(target, seq, mask)
    weights = torch.rand(out.values.shape) + 0.5
    (out.values * weights).sum().backward()
    hit = torch.zeros(3, 30, dtype=torch.bool)
    hit.scatter_(1, out.index.clamp(min=0), out.mask)
    assert torch.equal(seq.grad.abs().sum(-1) > 0, hit)

    items = emb.weight.detach().clone().requires_grad_()
    out = ETARetriever(DIM, BITS, k=6)(target, mask=mask, seq_ids=ids, items=items)
    (out.values * weights).sum().backward()
    rows = torch.zeros(items.shape[0], dtype=torch.bool)
    rows[ids.gather(1, out.index.clamp(min=0))[out.mask]] = True
    assert torch.equal(items.grad.abs().sum(-1) > 0, rows)


def test_gradcheck_retriever_and_attention() -> None:
    emb, ids, mask, target = batch(4, b=2, length=12, dtype=torch.float64)
    seq = emb(ids).detach().requires_grad_()
    target = target.requires_grad_()
    retriever = ETARetriever(DIM, BITS, k=4).double()
    assert torch.autograd.gradcheck(lambda s: retriever(target, s, mask).values, (seq,))
    torch.manual_seed(0)
    eta = ETAAttention(DIM, BITS, k=4, heads=2).double()
    assert torch.autograd.gradcheck(lambda t, s: eta(t, s, mask), (target, seq))


def test_eta_attention_gives_gradients_to_target_and_sequence() -> None:
    emb, ids, mask, target = batch(5)
    seq = emb(ids).detach().requires_grad_()
    target = target.requires_grad_()
    out = ETAAttention(DIM, BITS, k=5, heads=2)(target, seq, mask)
    assert out.shape == (3, DIM)
    out.square().sum().backward()
    assert target.grad.abs().sum() > 0 and seq.grad.abs().sum() > 0


def test_all_padding_rows_are_finite() -> None:
    emb, ids, mask, target = batch(6)
    mask[1] = False
    seq = emb(ids).detach().requires_grad_()
    target = target.requires_grad_()
    eta = ETAAttention(DIM, BITS, k=5, heads=2)
    out = eta(target, seq, mask)
    assert out.isfinite().all()
    torch.testing.assert_close(out[1], eta.attention.out.bias)
    out.sum().backward()
    assert target.grad.isfinite().all() and seq.grad.isfinite().all()


def test_target_attention_ignores_masked_items() -> None:
    torch.manual_seed(0)
    attn = TargetAttention(DIM, heads=4)
    target, items = torch.randn(2, DIM), torch.randn(2, 6, DIM)
    mask = torch.tensor([[True, False, True, False, True, True], [False] * 5 + [True]])
    changed = items.clone()
    changed[~mask] = 100.0
    torch.testing.assert_close(attn(target, items, mask), attn(target, changed, mask))
    torch.testing.assert_close(attn(target[:1], items[:1, [0, 2, 4, 5]]), attn(target, items, mask)[:1])


def test_state_dict_round_trip() -> None:
    emb, ids, mask, target = batch(7)
    seq = emb(ids)
    torch.manual_seed(0)
    eta = ETAAttention(DIM, BITS, k=5, heads=2, seed=1)
    state = eta.state_dict()
    assert "retriever.planes" in state
    torch.manual_seed(1)
    other = ETAAttention(DIM, BITS, k=5, heads=2, seed=2)
    assert not torch.equal(other.retriever.planes, eta.retriever.planes)
    other.load_state_dict(state)
    torch.testing.assert_close(other(target, seq, mask), eta(target, seq, mask), rtol=0, atol=0)


def test_non_contiguous_sequence() -> None:
    emb, ids, mask, target = batch(8, length=20)
    base = emb(ids).detach()
    seq_t = base.transpose(0, 1).contiguous().transpose(0, 1)  # same values, position-major storage
    seq_s = torch.stack([base, -base], dim=-1).flatten(-2)[..., ::2]  # same values, feature stride 2
    retriever = ETARetriever(DIM, BITS, k=7)
    want = retriever(target, base, mask)
    for seq in (seq_t, seq_s):
        assert not seq.is_contiguous() and torch.equal(seq, base)
        got = retriever(target, seq, mask)
        assert torch.equal(got.index, want.index) and torch.equal(got.values, want.values)


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_compiled_fullgraph_equals_eager() -> None:
    emb, ids, mask, target = batch(9, b=4, length=50)
    seq = emb(ids).detach()
    torch.manual_seed(0)
    eta = ETAAttention(DIM, BITS, k=6, heads=2)
    cache = SignatureCache(emb, eta.retriever)

    def both(target: torch.Tensor, seq: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return eta(target, seq, mask) + eta(target, mask=mask, seq_ids=ids, cache=cache)

    compiled = torch.compile(both, fullgraph=True)
    torch.testing.assert_close(compiled(target, seq, ids, mask), both(target, seq, ids, mask))


@pytest.mark.parametrize("pad", [-1, 25])
def test_masked_padding_ids_in_short_rows(pad: int) -> None:
    """Left-padded rows with fewer than k items: empty slots never read the padding id (at position 0)."""
    emb, ids, _, target = batch(12, b=3, length=20, n=25)
    ids[1, :15] = pad  # 5 behaviours < k
    ids[2, :] = pad  # none
    mask = ids != pad
    retriever = ETARetriever(DIM, BITS, k=8)
    want = retriever(target, emb(ids.clamp(min=0, max=24)), mask)
    cache = SignatureCache(emb, retriever)
    for got in (retriever(target, mask=mask, seq_ids=ids, cache=cache),
                retriever(target, mask=mask, seq_ids=ids, items=emb.weight)):
        assert torch.equal(got.index, want.index) and torch.equal(got.mask, want.mask)
        assert torch.equal(got.values, want.values)
    assert want.mask.sum(1).tolist() == [8, 5, 0]
    assert (want.values[~want.mask] == 0).all()
    out = ETAAttention(DIM, BITS, k=8, heads=2)(target, mask=mask, seq_ids=ids, cache=SignatureCache(emb, retriever))
    assert torch.isfinite(out).all()


def test_cache_of_other_planes_is_refused_until_refreshed() -> None:
    emb, ids, mask, target = batch(13)
    retriever = ETARetriever(DIM, BITS, k=5, seed=0)
    other = SignatureCache(emb, er.SimHasher(DIM, BITS, seed=1))
    with pytest.raises(ValueError, match="cache holds signatures hashed with other planes"):
        retriever(target, mask=mask, seq_ids=ids, cache=other)
    cache = SignatureCache(emb, retriever)
    retriever.load_state_dict(ETARetriever(DIM, BITS, k=5, seed=7).state_dict())  # new planes
    with pytest.raises(ValueError, match="or call cache.refresh"):
        retriever(target, mask=mask, seq_ids=ids, cache=cache)
    cache.refresh([0])  # a row refresh after new planes rehashes every row
    assert torch.equal(retriever(target, mask=mask, seq_ids=ids, cache=cache).index,
                       retriever(target, emb(ids), mask).index)


def test_signature_cache_refresh_nothing() -> None:
    emb, _, _, _ = batch(14)
    cache = SignatureCache(emb, er.SimHasher(DIM, BITS))
    before = cache.signatures.clone()
    with torch.no_grad():
        emb.weight[2] *= -1
    for rows in ([], (), torch.empty(0, dtype=torch.int64)):
        cache.refresh(rows)
    assert torch.equal(cache.signatures, before)


def test_signature_cache_refresh_rows() -> None:
    emb, _, _, _ = batch(10, n=30)
    hasher = er.SimHasher(DIM, BITS, seed=0)
    cache = SignatureCache(emb, hasher)
    np.testing.assert_array_equal(cache.signatures.numpy().view(np.uint64), hasher(emb.weight.detach().numpy()))
    before = cache.signatures.clone()
    with torch.no_grad():
        emb.weight[[3, 7]] *= -1
        emb.weight[9] *= -1  # changed but not refreshed: stays stale
    cache.refresh(torch.tensor([[3, 7], [7, 3]]))
    assert torch.equal(cache.signatures[[3, 7]], ~before[[3, 7]])
    assert torch.equal(cache.signatures[9], before[9])
    rest = torch.ones(30, dtype=torch.bool)
    rest[[3, 7]] = False
    assert torch.equal(cache.signatures[rest], before[rest])
    cache.refresh()
    assert torch.equal(cache.signatures[9], ~before[9])
    with pytest.raises(IndexError, match=r"\[0, 30\), got row 30"):
        cache.refresh([1, 30])
    with pytest.raises(TypeError, match="rows must have an integer dtype"):
        cache.refresh(torch.tensor([1.0]))


def test_simhasher_and_retriever_planes_agree() -> None:
    emb, ids, mask, target = batch(11)
    retriever = ETARetriever(DIM, BITS, k=5, seed=3)
    a = SignatureCache(emb, retriever)
    b = SignatureCache(emb, er.SimHasher(DIM, BITS, seed=3))
    assert torch.equal(a.signatures, b.signatures)
    assert torch.equal(retriever(target, mask=mask, seq_ids=ids, cache=b).index,
                       retriever(target, emb(ids), mask).index)


@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum"])
def test_attached_cache_matches_fresh_hashing_after_updates(optimizer: str) -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(40, DIM)
    eta = ETAAttention(DIM, BITS, k=6, heads=2)
    params = list(emb.parameters()) + list(eta.parameters())
    opt = torch.optim.Adam(params, lr=0.2) if optimizer == "adam" else torch.optim.SGD(params, lr=0.05, momentum=0.9)
    cache = SignatureCache(emb, eta.retriever)
    handle = cache.attach(opt)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        ids = torch.randint(0, 20 if step % 2 else 40, (4, 30), generator=gen)  # some rows untouched some steps
        target_ids = torch.randint(0, 40, (4,), generator=gen)
        out = eta(emb(target_ids), emb(ids), ids != 0, seq_ids=ids)
        out.square().sum().backward()
        opt.step()
        opt.zero_grad()
        fresh = eta.retriever(emb(target_ids), emb(ids), ids != 0)
        served = eta.retriever(emb(target_ids), mask=ids != 0, seq_ids=ids, cache=cache)
        assert torch.equal(served.index, fresh.index)
        assert torch.equal(cache.signatures, torch.ops.etaretrieval.pack_signatures(emb.weight.detach(),
                                                                                    eta.retriever.planes))
    handle.remove()
    with torch.no_grad():
        emb.weight.neg_()
    opt.step()  # detached: no refresh
    assert not torch.equal(cache.signatures,
                           torch.ops.etaretrieval.pack_signatures(emb.weight.detach(), eta.retriever.planes))


def _retrieve(**overrides: object) -> None:
    emb, ids, mask, target = batch(12, length=10)
    args = dict(target=target, seq=emb(ids), mask=mask)
    args.update(overrides)
    ETARetriever(DIM, BITS, k=3)(**args)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"target": torch.zeros(3, DIM, dtype=torch.int64)}, TypeError, "target must have a floating-point"),
        ({"target": torch.zeros(3, DIM + 1)}, ValueError, rf"target must have shape \(B, {DIM}\)"),
        ({"target": np.zeros((3, DIM))}, TypeError, "target must be a torch.Tensor"),
        ({"target": torch.zeros(3, DIM, device="meta")}, ValueError, "target must be on the device of the module"),
        ({"seq": torch.zeros(3, 10)}, ValueError, rf"seq must have shape \(B, L, {DIM}\)"),
        ({"seq": torch.zeros(2, 10, DIM)}, ValueError, rf"seq must have shape \(3, L, {DIM}\)"),
        ({"seq": torch.zeros(3, 10, DIM, device="meta")}, ValueError, "seq must be on the device of target"),
        ({"mask": torch.ones(3, 10, dtype=torch.complex64)}, TypeError, "mask must have dtype torch.bool or a real"),
        ({"mask": torch.ones(3, 9, dtype=torch.bool)}, ValueError, r"mask must have shape \(3, 10\)"),
        ({"seq": None}, ValueError, "pass seq"),
        ({"seq_ids": torch.zeros(3, 9, dtype=torch.int64)}, ValueError, r"seq_ids must have shape \(3, 10\)"),
        ({"seq_ids": torch.zeros(3, 10)}, TypeError, "seq_ids must have an integer dtype"),
        ({"items": torch.zeros(5, DIM)}, ValueError, "pass items alone"),
        ({"seq": None, "items": torch.zeros(5, DIM)}, ValueError, "need seq_ids"),
        ({"seq": None, "items": torch.zeros(5, DIM + 1), "seq_ids": torch.zeros(3, 10, dtype=torch.int64)},
         ValueError, rf"items must have shape \(N, {DIM}\)"),
        ({"seq": None, "cache": "table", "seq_ids": torch.zeros(3, 10, dtype=torch.int64)}, TypeError,
         "cache must be a SignatureCache"),
        ({"seq": None, "items": torch.zeros(5, DIM), "seq_ids": torch.full((3, 10), 5)}, IndexError,
         "outside the table's rows"),
    ],
)
def test_retriever_errors(overrides: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _retrieve(**overrides)


def test_module_constructor_errors() -> None:
    with pytest.raises(ValueError, match="k must be >= 0"):
        ETARetriever(DIM, BITS, k=-1)
    with pytest.raises(ValueError, match="bits must be in 1..1024"):
        ETARetriever(DIM, 0, k=1)
    with pytest.raises(ValueError, match="heads must be >= 1 and divide dim"):
        ETAAttention(DIM, BITS, k=1, heads=3)
    emb = nn.Embedding(5, DIM)
    with pytest.raises(TypeError, match="embedding must be a torch.nn.Embedding"):
        SignatureCache(emb.weight, ETARetriever(DIM, BITS, 1))
    with pytest.raises(TypeError, match="hasher must be an ETARetriever"):
        SignatureCache(emb, torch.randn(DIM, BITS))
    with pytest.raises(ValueError, match=f"hasher must have dim = {DIM}"):
        SignatureCache(emb, ETARetriever(DIM + 1, BITS, 1))
    with pytest.raises(ValueError, match="optimizer must update embedding.weight"):
        SignatureCache(emb, ETARetriever(DIM, BITS, 1)).attach(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1))
    with pytest.raises(ValueError, match="cache must be built with planes of shape"):
        ETARetriever(DIM, 2 * BITS, 2)(torch.zeros(1, DIM), seq_ids=torch.zeros(1, 3, dtype=torch.int64),
                                       cache=SignatureCache(emb, ETARetriever(DIM, BITS, 1)))


def test_cache_on_another_device_is_a_clear_error() -> None:
    """A cache hashed before the module moved names the fix (the meta device stands in for CUDA here)."""
    emb, ids, mask, target = batch(15)
    retriever = ETARetriever(DIM, BITS, k=5)
    cache = SignatureCache(emb, retriever)
    retriever.to("meta")
    with pytest.raises(ValueError, match=r"cache signatures are on cpu, target on meta: .*cache.refresh\(\)"):
        retriever(target.to("meta"), mask=mask.to("meta"), seq_ids=ids.to("meta"), cache=cache)


# ---- hash_space="attention": the attention's projections folded into the planes ----


def attention_block(seed: int, k: int = 6, dtype: torch.dtype = torch.float32, **kwargs: object) -> ETAAttention:
    """An attention-space ETA block whose query/key projections moved away from the identity."""
    torch.manual_seed(seed)
    block = ETAAttention(DIM, BITS, k, 2, seed=seed, hash_space="attention", **kwargs).to(dtype)
    with torch.no_grad():
        for proj in (block.attention.query, block.attention.key):
            proj.weight.add_(0.5 * torch.randn_like(proj.weight))
            proj.bias.add_(0.5 * torch.randn_like(proj.bias))
    return block


def bits_of(signatures: torch.Tensor, bits: int) -> torch.Tensor:
    """``(..., bits)`` bool: bit ``j`` of each signature (word ``j // 64``, least significant bit first)."""
    j = torch.arange(bits)
    return (signatures[..., j // 64] >> (j % 64)) & 1 == 1


@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([1, 63, 64, 100, 128]), bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_fold_equals_hashing_the_projected_rows(seed: int, bits: int, bias: bool, dtype: torch.dtype) -> None:
    from etaretrieval.torch._planes import fold, hash_rows

    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(DIM, DIM, bias=bias).to(dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(DIM, DIM, generator=gen, dtype=dtype))
        if bias:
            linear.bias.copy_(torch.randn(DIM, generator=gen, dtype=dtype))
    planes = torch.from_numpy(er.hyperplanes(DIM, bits, seed % 97)).to(dtype)
    x = torch.randn(5, 7, DIM, generator=gen, dtype=dtype)
    folded = fold(planes, linear)
    assert folded.shape == (DIM + 1, bits) and folded.dtype == dtype and not folded.requires_grad
    assert fold(planes.float(), linear).dtype == dtype  # the wider dtype
    got = bits_of(hash_rows(x, folded), bits)
    projection = linear(x).detach() @ planes
    clear = projection.abs() > (1e-3 if dtype == torch.float32 else 1e-9)  # not within rounding of zero
    assert bool(clear.float().mean() > 0.9)
    assert torch.equal(got[clear], (projection > 0)[clear])
    # with a constant-1 feature appended the affine planes are plain planes: the same signatures
    ones = torch.cat([x, torch.ones(5, 7, 1, dtype=dtype)], dim=-1)
    assert torch.equal(hash_rows(x, folded), torch.ops.etaretrieval.pack_signatures(ones, folded))


@pytest.mark.parametrize("seed", range(4))
def test_attention_space_retrieval_is_the_projected_retrieval(seed: int) -> None:
    emb, ids, mask, target = batch(seed, dtype=torch.float64)
    block = attention_block(seed, dtype=torch.float64)
    seq = emb(ids)
    got = block.retrieve(target, seq, mask)
    planes = block.retriever.planes.double()
    query, keys = block.attention.query(target).detach(), block.attention.key(seq).detach()
    assert float((query @ planes).abs().min()) > 1e-9 and float((keys @ planes).abs().min()) > 1e-9
    projected = ETARetriever.from_planes(planes, block.k)(query, keys, mask)
    assert torch.equal(got.index, projected.index) and torch.equal(got.mask, projected.mask)
    assert torch.equal(got.values, torch.where(got.mask[..., None], seq.gather(
        1, got.index.clamp(min=0)[..., None].expand(-1, -1, DIM)), 0.0))
    # and it differs from hashing the embeddings (the projections matter)
    plain = ETAAttention(DIM, BITS, block.k, 2, seed=seed).double()
    assert not torch.equal(plain.retrieve(target, seq, mask).index, got.index)


def test_attention_space_at_identity_projections_is_the_embedding_space() -> None:
    emb, ids, mask, target = batch(5)
    attn = ETAAttention(DIM, BITS, 7, 2, seed=3, hash_space="attention")  # the attention starts at the identity
    plain = ETAAttention(DIM, BITS, 7, 2, seed=3)
    assert torch.equal(attn.retrieve(target, emb(ids), mask).index, plain.retrieve(target, emb(ids), mask).index)
    assert attn.key_planes().shape == (DIM + 1, BITS) and plain.key_planes() is plain.retriever.planes
    with pytest.raises(ValueError, match="hash_space must be 'embedding' or 'attention'"):
        ETAAttention(DIM, BITS, 7, 2, hash_space="keys")
    assert "hash_space='attention'" in repr(attn)
    assert ETAAttention.from_planes(attn.retriever.planes, 7, 2, hash_space="attention").hash_space == "attention"


@pytest.mark.parametrize("candidates", [None, 20])
def test_attention_space_paths_agree_cache_included(candidates: int | None) -> None:
    from etaretrieval.torch import TimeEncoding

    emb, ids, mask, target = batch(6, b=4, length=60, n=15)
    block = attention_block(6, k=8, candidates=candidates, time=TimeEncoding(DIM))
    seq = emb(ids)
    cache = SignatureCache(emb, block)
    assert cache.planes.shape == (DIM + 1, BITS) and cache.signatures.shape == (15, 1)
    runs = [
        block.retrieve(target, seq, mask),
        block.retrieve(target, seq, mask, seq_ids=ids),
        block.retrieve(target, mask=mask, seq_ids=ids, items=emb.weight),
        block.retrieve(target, mask=mask, seq_ids=ids, cache=cache),
        block.retrieve(target, seq, mask, seq_ids=ids, cache=cache, seq_time=ids, target_cat=ids[:, 0]),
    ]
    for out in runs[1:]:
        assert torch.equal(out.index, runs[0].index) and torch.equal(out.values, runs[0].values)
    times = torch.cumsum(torch.ones_like(ids), 1)
    context = dict(seq_time=times, target_time=times[:, -1] + 1)
    torch.testing.assert_close(block(target, seq, mask, **context),
                               block(target, mask=mask, seq_ids=ids, cache=cache, **context), rtol=0, atol=0)


def test_attention_space_cache_is_stale_after_the_key_projection_trains() -> None:
    emb, ids, mask, target = batch(7, n=15)
    block = attention_block(7)
    cache = SignatureCache(emb, block)
    optimizer = torch.optim.SGD(block.attention.parameters(), lr=0.5)
    block(target, mask=mask, seq_ids=ids, cache=cache).pow(2).sum().backward()
    optimizer.step()  # the key projection moved: the folded planes changed
    with pytest.raises(ValueError, match="cache holds signatures hashed with other planes"):
        block(target, mask=mask, seq_ids=ids, cache=cache)
    cache.refresh([])  # a row refresh after new planes rehashes every row
    want = block.retrieve(target, emb(ids), mask).index
    assert torch.equal(block.retrieve(target, mask=mask, seq_ids=ids, cache=cache).index, want)
    # attached to an optimizer of the embedding and the attention: fresh after every step
    both = torch.optim.Adam([*emb.parameters(), *block.parameters()], lr=0.1)
    cache.attach(both)
    for _ in range(3):
        both.zero_grad()
        block(target, mask=mask, seq_ids=ids, cache=cache).pow(2).sum().backward()
        both.step()
        fresh = block.retrieve(target, emb(ids), mask).index
        assert torch.equal(block.retrieve(target, mask=mask, seq_ids=ids, cache=cache).index, fresh)
    with pytest.raises(ValueError, match=r"cache must be built with planes of shape \(9, 64\) \(affine"):
        block.retrieve(target, mask=mask, seq_ids=ids, cache=SignatureCache(emb, block.retriever))


def test_attention_space_gradients_reach_the_attention_and_the_retrieved_rows() -> None:
    emb, ids, mask, target = batch(8, dtype=torch.float64)
    block = attention_block(8, dtype=torch.float64)
    seq = emb(ids).detach().requires_grad_(True)
    t = target.clone().requires_grad_(True)
    out = block(t, seq, mask)
    out.sum().backward()
    found = block.retrieve(target, seq.detach(), mask)
    assert seq.grad is not None and t.grad is not None and t.grad.abs().sum() > 0
    picked = torch.zeros(mask.shape, dtype=torch.bool)
    for b in range(mask.shape[0]):
        picked[b, found.index[b][found.mask[b]]] = True
    assert bool((seq.grad.abs().sum(-1) > 0).eq(picked).all())  # exactly the retrieved rows
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in
               (block.attention.query.weight, block.attention.key.weight, block.attention.value.weight))
    assert block.retriever.planes.grad is None
    # piecewise smooth: within a retrieval, the analytic gradient is the numeric one
    assert torch.autograd.gradcheck(lambda s, q: block(q, s, mask[:1]),
                                    (seq.detach()[:1].requires_grad_(True), target[:1].requires_grad_(True)))


def test_side_planes_errors() -> None:
    emb, ids, mask, target = batch(9)
    retriever = ETARetriever(DIM, BITS, 4)
    with pytest.raises(ValueError, match=r"key_planes must have shape \(8, 64\) or \(9, 64\)"):
        retriever(target, emb(ids), key_planes=torch.zeros(DIM + 2, BITS))
    with pytest.raises(TypeError, match="query_planes must be a float32/float64 torch.Tensor"):
        retriever(target, emb(ids), query_planes=torch.zeros(DIM, BITS, dtype=torch.int64))


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_attention_space_compiles_fullgraph() -> None:
    emb, ids, mask, target = batch(10)
    seq = emb(ids).detach()  # a leaf: dynamo reads .grad of its inputs
    block = attention_block(10)
    cache = SignatureCache(emb, block)

    def both(target: torch.Tensor, seq: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return block(target, seq, mask) + block(target, mask=mask, seq_ids=ids, cache=cache)

    compiled = torch.compile(both, backend="eager", fullgraph=True)
    assert torch.equal(compiled(target, seq, ids, mask), both(target, seq, ids, mask))
