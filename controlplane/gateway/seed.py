"""Prices from the configuration file, written to the store at start-up."""

from __future__ import annotations

from controlplane import seeding
from controlplane.gateway import records
from controlplane.gateway.admin import check_price
from controlplane.keys import KeyLayout
from controlplane.store.base import Store
from corral.config import PriceConfig
from corral.v1 import gateway_pb2


async def seed_prices(store: Store, layout: KeyLayout, prices: tuple[PriceConfig, ...]) -> None:
    """Write the configured prices where the store lacks them or holds other values.

    Idempotent, like seed_aliases: a price already as configured is not rewritten; prices
    set only through AdminService stay.
    """
    found = []
    for price in prices:
        message = gateway_pb2.ModelPrice(
            model=price.model, input_per_mtok=price.input, output_per_mtok=price.output
        )
        if price.cached_input is not None:
            message.cached_input_per_mtok = price.cached_input
        check_price(message)
        said = f"price of {price.model} set from configuration"
        found.append((records.price_key(layout, price.model), message.SerializeToString(), said))
    await seeding.seed(store, found, "prices")
