"""Train an ETA CTR model data-parallel with DistributedDataParallel, one SignatureCache per rank.

Run on one machine with two processes (gloo on CPU, nccl when there are GPUs)::

    torchrun --nproc-per-node 2 examples/train_ddp.py

Each rank holds the whole model and a :class:`etaretrieval.torch.SignatureCache`
of the item embedding; retrieval looks the behaviours' signatures up there
(the serving path, used while training). The ranks train on different rows of
each global batch; DDP averages the gradients during ``backward()`` (sparse
embedding gradients included, on gloo), so after ``optimizer.step()`` every
rank holds the same weights. ``cache.attach(optimizer)`` rehashes, right after
each step, the rows that step changed, from those shared weights: the caches
stay identical on every rank without any communication of their own.

``--report PATH`` makes rank 0 write a JSON summary (losses, a digest of every
rank's cache after every step, and whether each cache equals fresh hashing of
its rank's weights); ``tests/test_ddp.py`` runs the script that way.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from etaretrieval.datasets import make_long_behavior_ctr
from etaretrieval.torch import ETAAttention, SignatureCache


class CTRModel(nn.Module):
    """Item embedding -> ETA interest over the whole sequence -> MLP -> click logit."""

    def __init__(self, n_items: int, dim: int, bits: int, k: int, sparse: bool) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items, dim, sparse=sparse)
        self.eta = ETAAttention(dim, bits, k, heads=2)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, 1))
        self.cache = SignatureCache(self.items, self.eta.retriever)

    def forward(self, target: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        query = self.items(target)
        interest = self.eta(query, mask=sequences != 0, seq_ids=sequences, cache=self.cache)
        return self.mlp(torch.cat([query, interest], dim=1)).squeeze(1)


def digest(t: torch.Tensor) -> int:
    """A 63-bit digest of a tensor's bytes (equal tensors, equal digests)."""
    raw = t.detach().cpu().contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "little") >> 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256, help="global batch, split across the ranks")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seq-len", type=int, default=500)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--dense", action="store_true", help="dense embedding gradients (always on nccl)")
    parser.add_argument("--report", help="rank 0 writes a JSON summary here")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    sparse = not (args.dense or cuda)  # NCCL has no sparse all-reduce

    data = make_long_behavior_ctr(args.users, args.seq_len, recent=50, seed=0)  # the same data on every rank
    sequences = torch.from_numpy(data.sequences).to(device)
    target = torch.from_numpy(data.target).to(device)
    user = torch.from_numpy(data.user).to(device)
    label = torch.from_numpy(data.label).to(device)

    torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway
    model = CTRModel(data.n_items + 1, args.dim, args.bits, args.k, sparse).to(device)
    # The cache's buffers need no broadcast before each forward: every rank refreshes its own from the
    # weights that DDP keeps identical.
    no_buffer_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else {"broadcast_buffers": False}
    )
    ddp = DistributedDataParallel(model, **no_buffer_sync)
    dense_params = [p for name, p in model.named_parameters() if name != "items.weight"]
    if sparse:
        optimizers = [torch.optim.SparseAdam([model.items.weight], lr=args.lr),
                      torch.optim.Adam(dense_params, lr=args.lr)]
    else:
        optimizers = [torch.optim.Adam(model.parameters(), lr=args.lr)]
    model.cache.attach(optimizers[0])  # after DDP's initial broadcast; refreshes after every step of optimizers[0]

    order = torch.Generator().manual_seed(1)  # the same global batches on every rank
    losses, cache_digests, fresh = [], [], []
    for step in range(args.steps):
        rows = torch.randint(0, target.shape[0], (args.batch,), generator=order)[rank::world].to(device)
        logits = ddp(target[rows], sequences[user[rows]])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, label[rows])
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()  # DDP averages the gradients of all ranks here
        for opt in optimizers:
            opt.step()  # the cache's hook runs after optimizers[0].step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
        if args.report:
            mine = torch.tensor([digest(model.cache.signatures), digest(model.items.weight)])
            every = [torch.zeros(2, dtype=torch.int64) for _ in range(world)]
            dist.all_gather_object(every, mine)
            cache_digests.append([[int(d) for d in t] for t in every])
            want = torch.ops.etaretrieval.pack_signatures(model.items.weight.detach(), model.eta.retriever.planes)
            ok = [False] * world
            dist.all_gather_object(ok, bool(torch.equal(model.cache.signatures, want)))
            fresh.append(ok)
        if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}", flush=True)
    if rank == 0 and args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump({"world_size": world, "backend": dist.get_backend(), "sparse": sparse, "losses": losses,
                       "digests": cache_digests, "cache_is_fresh": fresh}, f)
    dist.destroy_process_group()
    if rank == 0:
        first, last = np.mean(losses[: max(1, len(losses) // 5)]), np.mean(losses[-max(1, len(losses) // 5):])
        print(f"mean loss: first fifth {first:.4f}, last fifth {last:.4f}")


if __name__ == "__main__":
    main()
