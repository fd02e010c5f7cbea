"""Blue-green: start the whole new colour, switch all traffic at once, keep the old colour warm
through the monitoring window and `scale_down_delay` after it, so that a rollback is an instant
switch back and (under safeship's own policy) a failure of the new colour alone is confirmed side
by side first. A model of another tool plans that tool's own blue-green instead (`shaped`)."""

from __future__ import annotations

from safeship.strategies.base import (
    PlanInput,
    Step,
    analyze,
    confirm_split,
    monitor,
    pause,
    promote,
    prove,
    scale,
    shaped,
    wait_ready,
    weights,
)


class BlueGreenStrategy:
    name = "blue_green"

    def plan(self, given: PlanInput) -> list[Step]:
        return shaped(self.name, given, self.own_plan(given))

    def own_plan(self, given: PlanInput) -> list[Step]:
        blue_green = given.settings.strategies.blue_green
        timeout = blue_green.health_check_timeout
        confirm = confirm_split(given)
        steps: list[Step] = [
            scale(given.candidate, given.replicas),
            wait_ready(given.candidate, given.replicas, timeout),
        ]
        if confirm is not None:
            # Without a record of the old colour from before the deployment, the new colour alone
            # would have nothing to be judged against: it is first judged beside the old colour.
            steps.append(prove(confirm))
        steps += [
            weights({given.candidate: 100}),
            # The switch confirmation: the new colour, now taking all traffic, must have every
            # instance ready within traffic_switch_timeout, or the switch is undone (rollback).
            wait_ready(given.candidate, given.replicas, blue_green.traffic_switch_timeout),
            analyze(compare=False, duration=blue_green.post_switch_analysis, policy_step=0, confirm=confirm),
            promote(),
            # The old colour stays warm through the monitoring window, so that a failure there is
            # confirmed side by side and rolled back by a switch, then for scale_down_delay more.
            monitor(given.settings, confirm),
        ]
        if given.baseline is not None:
            steps += [pause(blue_green.scale_down_delay), scale(given.baseline, 0)]
        return steps
