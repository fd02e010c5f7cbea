"""Recreate: stop the old version, start the new one. Requests that arrive in the gap are held by
the router for up to `max_wait` instead of failing."""

from __future__ import annotations

from safeship.strategies.base import (
    PlanInput,
    Step,
    analyze,
    hold,
    monitor,
    promote,
    scale,
    shaped,
    wait_ready,
    weights,
)


class RecreateStrategy:
    name = "recreate"

    def plan(self, given: PlanInput) -> list[Step]:
        return shaped(self.name, given, self.own_plan(given))

    def own_plan(self, given: PlanInput) -> list[Step]:
        recreate = given.settings.strategies.recreate
        steps: list[Step] = []
        if given.baseline is not None:
            steps += [hold(recreate.max_wait), scale(given.baseline, 0)]
        steps += [
            scale(given.candidate, given.replicas),
            wait_ready(given.candidate, given.replicas, given.readiness_timeout),
            weights({given.candidate: 100}),
            analyze(compare=False, duration=recreate.analysis, policy_step=0),
            promote(),
            monitor(given.settings),
        ]
        return steps
