"""A deliberately simple, deterministic policy for engine tests: advance after the step duration,
fail when the candidate's error rate in a look exceeds a limit. The real judges have their own tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safeship.analysis.base import Decision, StepContext, TickSample, Verdict
from safeship.config.models import AnalysisConfig


class StepPolicy:
    name = "step"

    def __init__(self, error_limit: float = 0.05, interval: float = 5.0) -> None:
        self.error_limit = error_limit
        self._interval = interval

    def weights(self, configured: Sequence[int]) -> list[int]:
        return list(configured)

    def interval(self, analysis: AnalysisConfig) -> float:
        return self._interval

    def start(self) -> dict[str, Any]:
        return {"looks": 0}

    def observe(self, state: dict[str, Any], sample: TickSample, ctx: StepContext) -> tuple[dict[str, Any], Decision]:
        state = {**state, "looks": state["looks"] + 1}
        c = sample.candidate
        if c.requests >= 20 and c.failed / c.requests > self.error_limit:
            return state, Decision(Verdict.FAILED, f"error rate {c.failed / c.requests:.1%}",
                                   {"trigger": "error_rate_threshold", "requests": c.requests})
        if ctx.time_in_step >= ctx.step_duration:
            return state, Decision(Verdict.SUCCESSFUL if not ctx.compare else Verdict.ADVANCE, "step passed")
        return state, Decision(Verdict.INCONCLUSIVE)
