"""The ETA modules under their first import path.

They live in :mod:`.retriever`, :mod:`.cache` and :mod:`.attention`; these
names keep objects pickled before the split loading.
"""

from __future__ import annotations

from .attention import ETAAttention, TargetAttention
from .cache import SignatureCache, _AdoptLoadedWeights
from .retriever import ETARetriever, Retrieved

__all__ = ["Retrieved", "ETARetriever", "SignatureCache", "TargetAttention", "ETAAttention", "_AdoptLoadedWeights"]
