"""Greedy adaptive batching for the embedder service (a patch of BentoML 1.4's dispatcher).

BentoML's batching dispatcher (``bentoml._internal.marshal.dispatcher``) holds a request
back, hoping for company, while ``queue length x (its wait + per-item cost)`` stays below
the *mean wait of the last 50 batches*. Under load that mean is the time requests spent
queued behind the running batch, seconds at 32 clients; once the load drops, every lone
request is held for most of that mean, and the mean decays only as slowly as the held
requests replace old samples (measured: /identify p50 970 ms at one client right after a
32-client phase, against 280 ms in-process).

On a CPU the running batch already uses every core, so holding buys nothing: requests
that arrive while a batch runs queue up and leave together as the next batch. This patch
keeps BentoML's batching (queue, batch sizes, splitting, shedding) and only sets the
hold time to zero.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_PATCHED = "_faces_greedy"


def use_greedy_batching() -> bool:
    """Make every batching dispatcher of this process dispatch as soon as it is free.

    Returns:
        True when the patch is (already) in place; False when BentoML's internals differ
        from 1.4's and batching keeps its own behaviour (logged).
    """
    try:
        from bentoml._internal.marshal.dispatcher import Optimizer
    except ImportError:
        logger.warning("BentoML's batching optimiser not found; keeping its default hold times")
        return False
    original = getattr(Optimizer, "trigger_refresh", None)
    if original is None or not hasattr(Optimizer(1.0), "wait"):
        logger.warning("BentoML's batching optimiser changed; keeping its default hold times")
        return False
    if getattr(original, _PATCHED, False):
        return True

    def trigger_refresh(self) -> None:
        original(self)  # keep the fitted per-item cost, used to shed hopeless requests
        self.wait = 0

    setattr(trigger_refresh, _PATCHED, True)
    Optimizer.trigger_refresh = trigger_refresh
    return True
