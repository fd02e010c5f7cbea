"""Canary: a few candidate instances take a growing share of traffic, judged at every step."""

from __future__ import annotations

import math

from safeship.strategies.base import (
    PlanInput,
    Step,
    analyze,
    confirm_split,
    first_deployment,
    monitor,
    promote,
    scale,
    shaped,
    split,
    wait_ready,
    weights,
)


class CanaryStrategy:
    name = "canary"

    def plan(self, given: PlanInput) -> list[Step]:
        return shaped(self.name, given, self.own_plan(given))

    def own_plan(self, given: PlanInput) -> list[Step]:
        canary = given.settings.strategies.canary
        if given.baseline is None:
            return first_deployment(given)
        steps: list[Step] = []
        ready = 0
        for index, percent in enumerate(given.policy_weights):
            needed = max(1, math.ceil(given.replicas * percent / 100))
            if percent >= 100:
                needed = given.replicas
            if needed > ready:
                steps += [
                    scale(given.candidate, needed),
                    wait_ready(given.candidate, needed, given.readiness_timeout),
                ]
                ready = needed
            if percent >= 100:
                break
            steps += [
                weights(split(given.candidate, given.baseline, percent)),
                # adaptive: false holds every step for its full step_duration
                analyze(compare=given.baseline is not None, duration=canary.step_duration, policy_step=index,
                        min_duration=None if canary.adaptive else canary.step_duration),
            ]
        # The baseline stays warm through the monitoring window: a failure there is confirmed side
        # by side before it rolls back.
        steps += [weights({given.candidate: 100}), promote(), monitor(given.settings, confirm_split(given))]
        if given.baseline is not None:
            steps.append(scale(given.baseline, 0))
        return steps
