"""A Redis outage under the catalog's change calls is logged when it starts and when it ends."""

from __future__ import annotations

import logging

import pytest
import redis

from recsvc.catalog.service import StoreOutage


def test_an_outage_is_two_lines_however_many_calls_it_refuses(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    outage = StoreOutage(clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="recsvc.catalog.service")
    outage.answered()  # Redis answering as usual: nothing to say
    assert caplog.records == []
    for n in (10, 1, 7):  # a feed's batches during the outage
        outage.refused(n, redis.ConnectionError("refused"))
        now[0] += 2.5
    outage.answered()
    outage.answered()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("event=catalog_change_refused items=10 error=ConnectionError")
    assert lines[1] == "event=catalog_store_back refused_items=18 down_s=7.5"
    outage.refused(2, redis.TimeoutError())  # a second outage is logged again
    again = caplog.records[-1].getMessage()
    assert again.startswith("event=catalog_change_refused items=2 error=TimeoutError")
