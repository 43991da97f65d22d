"""Prices from the configuration file, written to the store at start-up."""

from __future__ import annotations

import asyncio
import logging

from controlplane.gateway import records
from controlplane.gateway.admin import check_price
from controlplane.keys import KeyLayout
from controlplane.store.base import Store, StoreUnavailableError
from corral.backoff import Backoff
from corral.config import PriceConfig
from corral.v1 import gateway_pb2

log = logging.getLogger(__name__)


async def seed_prices(store: Store, layout: KeyLayout, prices: tuple[PriceConfig, ...]) -> None:
    """Write the configured prices where the store lacks them or holds other values.

    Idempotent, like seed_aliases: a price already as configured is not rewritten; prices
    set only through AdminService stay.
    """
    backoff = Backoff(base=0.1, cap=5.0)
    for price in prices:
        message = gateway_pb2.ModelPrice(
            model=price.model, input_per_mtok=price.input, output_per_mtok=price.output
        )
        if price.cached_input is not None:
            message.cached_input_per_mtok = price.cached_input
        check_price(message)
        value = message.SerializeToString()
        key = records.price_key(layout, price.model)
        while True:
            try:
                current = await store.get(key)
                if current is None or current.value != value:
                    await store.put(key, value)
                    log.info("price of %s set from configuration", price.model)
                break
            except StoreUnavailableError as exc:
                delay = backoff.next()
                log.warning("store unavailable seeding prices (%s); retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
