"""syncd's link keeps no more requests in flight than its printer announced in HELLO."""

from __future__ import annotations

from pathlib import Path

from syncd.link import LinkSettings
from tests.syncd.inprocess import printer_link


async def test_the_link_takes_the_smaller_of_its_option_and_the_printers_hello(
    tmp_path: Path,
) -> None:
    settings = LinkSettings(max_in_flight=100, status_interval=60)  # the printer says 64
    async with printer_link(tmp_path, settings) as (_, link):
        assert await link.wait_online(10)
        assert link.require().max_in_flight == 64
