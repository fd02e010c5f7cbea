"""Rolling: replace instances in batches within `max_surge` extra and `max_unavailable` missing.
Old instances leave only after the new ones that replace them are ready; traffic follows the count
of ready instances of each version."""

from __future__ import annotations

from safeship.strategies.base import (
    PlanInput,
    Step,
    analyze,
    first_deployment,
    monitor,
    promote,
    scale,
    shaped,
    wait_ready,
    weights,
)


def batches(replicas: int, max_surge: int, max_unavailable: int) -> list[tuple[int, int]]:
    """The (new, old) instance counts after each move, starting from (0, replicas)."""
    new, old = 0, replicas
    moves: list[tuple[int, int]] = []
    while new < replicas or old > 0:
        room = replicas + max_surge - (new + old)
        if new < replicas and room > 0:
            new += min(room, replicas - new)
            moves.append((new, old))
        removable = min(old, new + old - (replicas - max_unavailable))
        removable = min(removable, max(0, new + old - replicas) + max_unavailable)
        if removable > 0:
            old -= removable
            moves.append((new, old))
        elif new >= replicas and old > 0:
            old = 0
            moves.append((new, old))
        if len(moves) > 4 * replicas + 4:
            raise ValueError("rolling update cannot make progress with these settings")
    return moves


class RollingStrategy:
    name = "rolling"

    def plan(self, given: PlanInput) -> list[Step]:
        return shaped(self.name, given, self.own_plan(given))

    def own_plan(self, given: PlanInput) -> list[Step]:
        rolling = given.settings.strategies.rolling
        if given.baseline is None:
            return first_deployment(given)
        steps: list[Step] = []
        new_before, step_index = 0, 0
        for new, old in batches(given.replicas, rolling.max_surge, rolling.max_unavailable):
            if new > new_before:
                steps += [scale(given.candidate, new), wait_ready(given.candidate, new, given.readiness_timeout)]
                new_before = new
            total = new + old
            share = {given.candidate: round(100 * new / total)} if total else {given.candidate: 100}
            if old:
                share[given.baseline] = 100 - share[given.candidate]
            # Weights first, so instances about to leave are drained before they stop.
            steps += [weights(share), scale(given.baseline, old)]
            if old:
                least = rolling.min_instance_seconds
                steps.append(analyze(compare=True, duration=max(rolling.step_analysis, least), policy_step=step_index,
                                     min_duration=least))
                step_index += 1
        steps += [weights({given.candidate: 100}), promote(), monitor(given.settings)]
        return steps
