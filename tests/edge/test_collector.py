"""edge/collector.py: start-up's objects frozen, young collections made rarer."""

from __future__ import annotations

import gc

from edge import collector


def test_settle_freezes_and_raises_gen0() -> None:
    """After settle() what existed is frozen (collections skip it) and gen0 waits longer."""
    before = gc.get_threshold()
    kept = [[i] for i in range(1000)]  # survivors, tracked by the collector
    try:
        collector.settle()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == (collector.GEN0_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
