"""The ETA paper's comparison, reproducible: ``python -m etaretrieval.study``.

One long+short CTR model (:class:`etaretrieval.torch.ETAModel`) is trained
with each long-term interest block in turn (recent window, mean pooling,
SIM hard, exact inner-product top-K, full attention, ETA, SDIM; with and without
time information) on the same samples and seeds, and the test AUC, log loss,
train and inference time and the SimHash retrieval's recall are reported.
The metrics (numpy only) are reusable: :func:`auc`, :func:`logloss`,
:func:`recall_at_k`. Needs torch (and matplotlib for the plot).
"""

from __future__ import annotations

from .metrics import auc, logloss, recall_at_k

__all__ = ["auc", "logloss", "recall_at_k"]
