"""Time one training step of ETAAttention against full target attention.

For behaviour sequences of length L = 1,000 and 10,000, the forward + backward
time of one batch through:

* full attention: multi-head target attention over all L behaviours
  (:class:`etaretrieval.torch.TargetAttention` on ``table[ids]``);
* ETA (seq): :class:`etaretrieval.torch.ETAAttention` given the same
  ``(B, L, d)`` embeddings: hashes all of them, attends over the K nearest;
* ETA (items): ETAAttention given the ids and the ``(N, d)`` table: hashes the
  table's rows and reads only the K retrieved embeddings.

The embedding lookup is part of every step; each time is the best of 7
interleaved rounds. Run:
``python examples/time_eta_attention.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import os

# numpy's BLAS only projects small blocks (the signatures); left multi-threaded,
# its busy-waiting threads fight torch's for the cores. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402

from etaretrieval.torch import ETAAttention, TargetAttention  # noqa: E402

BATCH, DIM, HEADS, BITS, K = 64, 64, 4, 64, 64
N_ITEMS = 100_000
REPEATS = 7


def step_time(step: Callable[[], torch.Tensor]) -> float:
    """Seconds of one ``step().sum().backward()``."""
    start = time.perf_counter()
    step().sum().backward()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(N_ITEMS, DIM) / DIM**0.5)
    full = TargetAttention(DIM, HEADS)
    eta = ETAAttention(DIM, BITS, K, HEADS)
    print(f"B = {BATCH}, d = {DIM}, heads = {HEADS}, bits = {BITS}, K = {K}, {N_ITEMS} items; "
          f"{torch.get_num_threads()} threads; forward + backward per step")
    for length in (1_000, 10_000):
        ids = torch.randint(0, N_ITEMS, (BATCH, length))
        mask = torch.rand(BATCH, length) < 0.95
        target = torch.randint(0, N_ITEMS, (BATCH,))
        steps = {
            "full attention": lambda t=target, i=ids, m=mask: full(table[t], table[i], m),
            "ETA (seq)": lambda t=target, i=ids, m=mask: eta(table[t], table[i], m),
            "ETA (items)": lambda t=target, i=ids, m=mask: eta(table[t], mask=m, seq_ids=i, items=table),
        }
        for step in steps.values():  # warm up
            step_time(step)
        # Interleaved rounds, best of each: robust to other load on the machine.
        rounds = [{name: step_time(step) for name, step in steps.items()} for _ in range(REPEATS)]
        times = {name: min(r[name] for r in rounds) for name in steps}
        base = times["full attention"]
        print(f"L = {length:>6}: " + "   ".join(
            f"{name} {1e3 * t:8.1f} ms ({base / t:4.1f}x)" for name, t in times.items()))


if __name__ == "__main__":
    main()
