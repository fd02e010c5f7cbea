"""The seed's CustomMetric trigger on the local world: gauges scraped from each instance's /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit import ENV, SERVICE, Load, Setup, controller_with, deploy, wait_final

from safeship.api.client import ControllerClient

pytestmark = [pytest.mark.live, pytest.mark.slow]


def hot_release_config(text: str) -> str:
    text = text.replace("step_duration: 3s", "step_duration: 8s")
    text = text.replace("      - {type: error_rate_threshold, threshold: 0.05, duration: 2s}",
                        "      - {type: error_rate_threshold, threshold: 0.05, duration: 2s}\n"
                        "      - {type: custom_metric, metric: memory_pressure, threshold: 0.8, duration: 2s}")
    text = text.replace("v1.6.0]", "v1.6.0, v1.7.0]")
    assert "custom_metric" in text and "v1.7.0" in text
    return text


@pytest.fixture
def gauge_setup(tmp_path: Path) -> Iterator[Setup]:
    with controller_with(tmp_path, hot_release_config) as made:
        yield made


def test_a_hot_release_is_rolled_back_on_its_scraped_gauge(gauge_setup: Setup) -> None:
    client = ControllerClient(gauge_setup.state_dir)
    first, _ = wait_final(client, deploy(client, "v1.2.0")["id"])
    assert first["phase"] == "succeeded"
    with Load(client.routes()[f"{ENV}/{SERVICE}"], rate=100):
        record, _ = wait_final(client, deploy(client, "v1.7.0")["id"])
    assert record["phase"] == "rolled_back", record["reason"]
    assert "memory_pressure" in (record["reason"] or ""), record["reason"]
    assert record["evidence"]
