"""Custom gauges scraped from each ready instance's Prometheus `/metrics` page.

The local world's metric provider: for every ready instance it fetches `/metrics`, keeps the gauges
the rollback triggers name (or all of them), and averages each gauge per version. A failed scrape of
one instance is left out of the mean; when no instance of a version answers, that version has no
gauges this look, which the judge treats as no data (inconclusive), never as a pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Target:
    version: str
    host: str
    port: int


def parse_gauges(text: str, wanted: Collection[str] | None = None) -> dict[str, float]:
    """Gauge samples in Prometheus text; a gauge with several label sets is averaged."""
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "gauge" or (wanted is not None and family.name not in wanted):
            continue
        for sample in family.samples:
            found.setdefault(family.name, []).append(float(sample.value))
    return {name: sum(values) / len(values) for name, values in found.items() if values}


async def scrape(
    targets: Iterable[Target], *, wanted: Collection[str] | None = None, timeout: float = 1.0, path: str = "/metrics"
) -> dict[str, dict[str, float]]:
    """{version: {gauge: mean over the instances that answered}}."""
    targets = list(targets)
    async with httpx.AsyncClient(timeout=timeout) as http:
        pages = await asyncio.gather(
            *(http.get(f"http://{t.host}:{t.port}{path}") for t in targets), return_exceptions=True
        )
    per_version: dict[str, dict[str, list[float]]] = {}
    for target, page in zip(targets, pages, strict=True):
        if isinstance(page, BaseException) or page.status_code != 200:
            continue
        try:
            gauges = parse_gauges(page.text, wanted)
        except ValueError:
            continue  # not Prometheus text: no data from this instance
        for name, value in gauges.items():
            per_version.setdefault(target.version, {}).setdefault(name, []).append(value)
    return {v: {n: sum(xs) / len(xs) for n, xs in names.items()} for v, names in per_version.items()}
