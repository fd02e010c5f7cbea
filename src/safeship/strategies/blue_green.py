"""Blue-green: start the whole new colour, switch all traffic at once, keep the old colour warm for
`scale_down_delay` so that a rollback is an instant switch back."""

from __future__ import annotations

from safeship.strategies.base import PlanInput, Step, analyze, monitor, pause, promote, scale, wait_ready, weights


class BlueGreenStrategy:
    name = "blue_green"

    def plan(self, given: PlanInput) -> list[Step]:
        blue_green = given.settings.strategies.blue_green
        timeout = blue_green.health_check_timeout
        steps: list[Step] = [
            scale(given.candidate, given.replicas),
            wait_ready(given.candidate, given.replicas, timeout),
            weights({given.candidate: 100}),
            # The switch confirmation: the new colour, now taking all traffic, must have every
            # instance ready within traffic_switch_timeout, or the switch is undone (rollback).
            wait_ready(given.candidate, given.replicas, blue_green.traffic_switch_timeout),
            analyze(compare=False, duration=blue_green.post_switch_analysis, policy_step=0),
            promote(),
        ]
        if given.baseline is not None:
            steps += [pause(blue_green.scale_down_delay), scale(given.baseline, 0)]
        steps.append(monitor(given.settings))
        return steps
