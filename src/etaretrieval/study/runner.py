"""Train and evaluate one :class:`~etaretrieval.torch.ETAModel` per variant and seed; time long sequences."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from ..datasets import RaggedSequenceBatch, SequenceBatch, SequenceSamples
from ..torch import (
    ETAAttention,
    ETAModel,
    SignatureCache,
    TargetAttention,
    TimeEncoding,
    TWINAttention,
    select_top,
)
from .metrics import auc, logloss, recall_at_k
from .variants import BlockSizes, Variant

__all__ = ["StudyConfig", "RunResult", "LongTiming", "to_tensors", "load_batch", "split_validation", "run_variant",
           "time_long_sequences"]


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of a study run (data, model, training, timing)."""

    n_users: int = 2000
    max_len: int = 2000
    min_len: Optional[int] = None
    data_seed: int = 0
    dim: int = 32
    k: int = 32
    recent: int = 16
    heads: int = 2
    hidden: tuple[int, ...] = (128, 64)
    batch_size: int = 128
    epochs: int = 1
    max_steps: int = 0  # 0: whole epochs
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    bits: tuple[int, ...] = (64, 128)
    long_len: int = 10_000
    long_batch: int = 64
    long_repeat: int = 5
    test_samples: int = 0  # 0: every test sample; else a fixed random subset of this size
    val_users: float = 0.0  # share of the training users held out as a validation set (0: none)
    ragged: bool = False  # batches as torch.nested jagged histories (values + offsets) instead of padded to max_len

    @property
    def sizes(self) -> BlockSizes:
        return BlockSizes(self.dim, self.k, self.heads)


@dataclass(frozen=True)
class RunResult:
    """Test metrics and timings of one variant trained with one seed."""

    variant: str
    seed: int
    auc: float
    logloss: float
    train_ms: float
    infer_ms: float
    recall: float
    seconds: float
    consistency: float = float("nan")
    val_auc: float = float("nan")
    k: int = 0


def to_tensors(batch: Union[SequenceBatch, RaggedSequenceBatch]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(inputs, label)``: the keyword arguments of :meth:`ETAModel.forward` and the ``(B,)`` float labels.

    A :class:`SequenceBatch` gives ``(B, L)`` tensors and its ``mask``; a
    :class:`RaggedSequenceBatch` gives ``history``, ``times`` and
    ``categories`` as ``torch.nested`` jagged tensors ``(B, j)`` over its
    arrays (no copy) and one shared offsets tensor, and no ``mask``.
    """
    if isinstance(batch, RaggedSequenceBatch):
        offsets = torch.from_numpy(batch.offsets)  # one tensor: the jagged inputs share their ragged dimension
        lengths = batch.lengths
        shortest, longest = (int(lengths.min()), int(lengths.max())) if lengths.size else (None, None)

        def rows(values: np.ndarray) -> torch.Tensor:
            return torch.nested.nested_tensor_from_jagged(torch.from_numpy(values), offsets,
                                                          min_seqlen=shortest, max_seqlen=longest)
    else:
        def rows(values: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(values)

    inputs = {
        "history": rows(batch.history),
        "target": torch.from_numpy(batch.target),
        "times": rows(batch.times),
        "target_time": torch.from_numpy(batch.target_time),
    }
    if isinstance(batch, SequenceBatch):
        inputs["mask"] = torch.from_numpy(batch.mask)
    if batch.categories is not None and batch.target_category is not None:
        inputs["categories"] = rows(batch.categories)
        inputs["target_category"] = torch.from_numpy(batch.target_category)
    return inputs, torch.from_numpy(batch.label)


def load_batch(data: SequenceSamples, rows: np.ndarray,
               cfg: StudyConfig) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`to_tensors` of the samples ``rows`` with their last ``cfg.max_len`` behaviours, ragged if ``cfg.ragged``.

    Padded batches are ``cfg.max_len`` wide (left-padded); ragged ones hold
    the same behaviours back to back.
    """
    if cfg.ragged:
        return to_tensors(data.ragged_batch(rows, cfg.max_len))
    return to_tensors(data.batch(rows, cfg.max_len))


def build_model(variant: Variant, data: SequenceSamples, cfg: StudyConfig, seed: int) -> ETAModel:
    """The study's model with ``variant``'s long-term block, initialised from ``seed``."""
    torch.manual_seed(seed)
    table = data.item_categories()
    return ETAModel(data.n_items, cfg.dim, n_categories=data.n_categories, long=variant.build(cfg.sizes, seed),
                    recent=cfg.recent, heads=cfg.heads, hidden=cfg.hidden,
                    item_categories=None if table is None else torch.from_numpy(table))


def _recall(model: ETAModel, inputs: dict[str, torch.Tensor], k: int) -> float:
    """Recall of the model's SimHash retrieval against the exact inner-product top-``k``, on the same embeddings."""
    block = model.long
    assert isinstance(block, ETAAttention)
    seq = model.embed(inputs["history"], inputs.get("categories"))
    query = model.embed(inputs["target"], inputs.get("target_category"))
    found = block.retriever(query, seq, inputs["mask"]).index
    truth, _ = select_top(torch.einsum("bd,bld->bl", query, seq), inputs["mask"], k)
    return recall_at_k(found.numpy(), truth.numpy())


def _consistency(model: ETAModel, inputs: dict[str, torch.Tensor], k: int) -> float:
    """Share of the long-term block's own attention top-``k`` (exact logits over the whole history) it retrieves.

    The attention's score of a behaviour is its logit summed over heads, on
    the embedding plus its time embedding (as the block attends); the
    retrieved set is what :meth:`ETAAttention.retrieve` or
    :meth:`TWINAttention.retrieve` gives (a TWIN block scores 1 by construction).
    """
    block = model.long
    seq = model.embed(inputs["history"], inputs.get("categories"))
    query = model.embed(inputs["target"], inputs.get("target_category"))
    mask, context = inputs["mask"], {"seq_time": inputs["times"], "target_time": inputs["target_time"]}
    if isinstance(block, TWINAttention):
        found = block.retrieve(query, seq, mask, **context)[0]
    else:
        assert isinstance(block, ETAAttention)
        found = block.retrieve(query, seq, mask).index
    items = seq if block.time is None else seq + block.time(mask, shape=tuple(mask.shape), **context)
    truth, _ = select_top(block.attention.logits(query, items).sum(dim=1), mask, k)
    return recall_at_k(found.numpy(), truth.numpy())


def split_validation(data: SequenceSamples, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, val_rows)``: the training samples, the users of a ``share`` of them held out.

    Whole users are held out (none of a validation user's samples is trained
    on), chosen by ``seed``; ``share = 0`` holds out nothing.
    """
    train_rows = np.flatnonzero(data.train)
    if share <= 0:
        return train_rows, train_rows[:0]
    users = np.unique(data.user[train_rows])
    held = np.random.default_rng(seed).choice(users, max(1, round(share * users.size)), replace=False)
    val = np.isin(data.user[train_rows], held)
    return train_rows[~val], train_rows[val]


def _evaluate(
    model: ETAModel, data: SequenceSamples, rows: np.ndarray, cfg: StudyConfig, k: int, measure: bool, recall: bool,
) -> tuple[float, float, list[float], list[float], list[float]]:
    """``(auc, logloss, infer_ms, recalls, consistencies)`` of ``model`` on the samples ``rows``.

    ``measure``: also the consistency of a retrieving block, and with ``recall`` its SimHash recall (both
    measured on the padded rows, whatever ``cfg.ragged``: the same numbers for either layout).
    """
    probs, labels, infer_ms, recalls, consistencies = [], [], [], [], []
    retrieves = isinstance(model.long, (ETAAttention, TWINAttention))
    with torch.no_grad():
        for batch in data.batches(cfg.batch_size, cfg.max_len, rows=rows, ragged=cfg.ragged):
            inputs, label = to_tensors(batch)
            t0 = time.perf_counter()
            logits = model(**inputs)
            infer_ms.append(1e3 * (time.perf_counter() - t0))
            probs.append(torch.sigmoid(logits).numpy())
            labels.append(label.numpy())
            if measure and (recall or retrieves):
                padded = to_tensors(batch.padded(cfg.max_len))[0] if isinstance(batch, RaggedSequenceBatch) else inputs
                if recall:
                    recalls.append(_recall(model, padded, k))
                if retrieves:
                    consistencies.append(_consistency(model, padded, k))
    y, p = np.concatenate(labels), np.concatenate(probs)
    return auc(y, p), logloss(y, p), infer_ms, recalls, consistencies


def run_variant(
    variant: Variant,
    data: SequenceSamples,
    cfg: StudyConfig,
    seed: int,
    progress: Optional[Callable[[str], None]] = None,
) -> RunResult:
    """Train ``variant`` on the training samples, evaluate it on the test samples.

    Parameters
    ----------
    variant : Variant
    data : SequenceSamples
        Samples with ``train`` marking the training ones.
    cfg : StudyConfig
    seed : int
        Model initialisation, batch order and hyperplanes.
    progress : callable, optional
        Called with a short status line now and then.

    Returns
    -------
    RunResult
    """
    start = time.perf_counter()
    k = cfg.k if variant.k is None else variant.k
    model = build_model(variant, data, cfg, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    train_rows, val_rows = split_validation(data, cfg.val_users, cfg.data_seed)
    test_rows = np.flatnonzero(~data.train)
    step_ms: list[float] = []
    model.train()
    per_epoch = -(-train_rows.size // cfg.batch_size)
    for epoch in range(cfg.epochs):
        steps = min(per_epoch, max(0, cfg.max_steps - len(step_ms))) if cfg.max_steps else per_epoch
        # one permutation of the training rows per epoch, drawn from the run's generator
        batches = data.batches(cfg.batch_size, cfg.max_len, rows=train_rows, ragged=cfg.ragged, shuffle=True, seed=rng)
        for i, batch in enumerate(itertools.islice(batches, steps)):
            inputs, label = to_tensors(batch)
            t0 = time.perf_counter()
            loss = loss_fn(model(**inputs), label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step_ms.append(1e3 * (time.perf_counter() - t0))
            if progress is not None and (i + 1) % 20 == 0:
                progress(f"epoch {epoch + 1} step {i + 1}/{steps} loss {loss.item():.4f}")
    model.eval()
    if cfg.test_samples and cfg.test_samples < test_rows.size:  # the same subset for every variant and seed
        test_rows = np.sort(np.random.default_rng(cfg.data_seed).choice(test_rows, cfg.test_samples, replace=False))
    val_auc = _evaluate(model, data, val_rows, cfg, k, False, False)[0] if val_rows.size else float("nan")
    test_auc, test_logloss, infer_ms, recalls, consistencies = _evaluate(
        model, data, test_rows, cfg, k, True, variant.retrieval_bits is not None)
    return RunResult(
        variant=variant.name,
        seed=seed,
        auc=test_auc,
        logloss=test_logloss,
        train_ms=float(np.median(step_ms[1:] if len(step_ms) > 1 else step_ms)),
        infer_ms=float(np.median(infer_ms)),
        recall=float(np.mean(recalls)) if recalls else float("nan"),
        seconds=time.perf_counter() - start,
        consistency=float(np.mean(consistencies)) if consistencies else float("nan"),
        val_auc=val_auc,
        k=k,
    )


@dataclass(frozen=True)
class LongTiming:
    """Inference milliseconds per batch of one interest block at a long sequence length."""

    name: str
    ms: float


def _median_ms(fn: Callable[[], torch.Tensor], repeat: int) -> float:
    fn()  # warm-up (JIT compilation, allocator)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(times))


def time_long_sequences(
    length: int, batch: int, cfg: StudyConfig, *, n_items: int = 100_000, bits: Sequence[int] = (64,), repeat: int = 5
) -> list[LongTiming]:
    """Inference time of full attention and ETA (with time) over ``batch`` histories of ``length`` behaviours.

    Untrained blocks (timing does not depend on the weights) over random item
    ids of an ``(n_items, dim)`` embedding. Rows: full attention on the
    gathered ``(B, L, d)`` embeddings; ETA hashing the same embeddings on
    every call; ETA hashing the whole embedding table on every call and
    looking the signatures up by id (:class:`~etaretrieval.torch.ETAModel`'s
    training form); ETA looking the signatures up in a
    :class:`~etaretrieval.torch.SignatureCache` (the serving form). The last
    two build no ``(B, L, d)`` tensor.
    """
    gen = torch.Generator().manual_seed(0)
    emb = nn.Embedding(n_items + 1, cfg.dim)
    ids = torch.randint(1, n_items + 1, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    times = torch.cumsum(torch.randint(1, 3600, (batch, length), generator=gen), dim=1)
    request = times[:, -1] + 60
    target = torch.randint(1, n_items + 1, (batch,), generator=gen)
    context = {"seq_time": times, "target_time": request}
    full = TargetAttention(cfg.dim, cfg.heads, time=TimeEncoding(cfg.dim)).eval()
    rows = []
    with torch.no_grad():
        rows.append(LongTiming("full attention + time", _median_ms(
            lambda: full(emb(target), emb(ids), mask, **context), repeat)))
        for b in bits:
            eta = ETAAttention(cfg.dim, b, cfg.k, cfg.heads, time=TimeEncoding(cfg.dim)).eval()
            cache = SignatureCache(emb, eta.retriever)

            def hashing(eta: ETAAttention = eta) -> torch.Tensor:
                return eta(emb(target), emb(ids), mask, **context)

            def table(eta: ETAAttention = eta) -> torch.Tensor:
                return eta(emb(target), mask=mask, seq_ids=ids, items=emb.weight, **context)

            def serving(eta: ETAAttention = eta, cache: SignatureCache = cache) -> torch.Tensor:
                return eta(emb(target), mask=mask, seq_ids=ids, cache=cache, **context)

            rows.append(LongTiming(f"ETA {b} bits + time, hashing the sequence", _median_ms(hashing, repeat)))
            rows.append(LongTiming(f"ETA {b} bits + time, hashing the item table ({n_items:,} rows)",
                                   _median_ms(table, repeat)))
            rows.append(LongTiming(f"ETA {b} bits + time, signature cache", _median_ms(serving, repeat)))
    return rows
