"""Load shapes as pure functions of elapsed seconds, so they can be tested without Locust.

``target(shape, t)`` gives ``(users, spawn_rate)`` at ``t`` seconds, or None once the shape is over
(Locust's ``LoadTestShape.tick`` contract). ``phases(shape)`` names the windows the report
summarises separately (for the spike: before, during, after).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.loadconfig import Shape


@dataclass(frozen=True)
class Phase:
    name: str
    start_s: float
    end_s: float
    users: int


def phases(shape: Shape) -> list[Phase]:
    """The shape as consecutive windows of constant user count."""
    if shape.kind == "steady":
        s = shape.steady
        return [Phase("steady", 0.0, s.duration_s, s.users)]
    if shape.kind == "ramp":
        r = shape.ramp
        steps = 1 + math.ceil((r.max_users - r.start_users) / r.step_users)
        out = []
        for i in range(steps):
            users = min(r.start_users + i * r.step_users, r.max_users)
            out.append(Phase(f"step{i + 1}:{users}u", i * r.step_s, (i + 1) * r.step_s, users))
        return out
    p = shape.spike
    peak = max(p.base_users + 1, round(p.base_users * p.factor))
    t1 = p.before_s
    t2 = t1 + p.spike_s
    return [
        Phase("before", 0.0, t1, p.base_users),
        Phase("spike", t1, t2, peak),
        Phase("after", t2, t2 + p.after_s, p.base_users),
    ]


def spawn_rate(shape: Shape) -> float:
    if shape.kind == "steady":
        return shape.steady.spawn_rate
    if shape.kind == "ramp":
        return shape.ramp.spawn_rate
    return shape.spike.spawn_rate


def duration_s(shape: Shape) -> float:
    return phases(shape)[-1].end_s


def target(shape: Shape, t: float) -> tuple[int, float] | None:
    """Users and spawn rate at ``t`` seconds into the run; None when the shape has ended."""
    if t < 0:
        raise ValueError("elapsed time must be >= 0")
    for phase in phases(shape):
        if phase.start_s <= t < phase.end_s:
            return phase.users, spawn_rate(shape)
    return None


def peak_users(shape: Shape) -> int:
    return max(p.users for p in phases(shape))


SHAPE_ENV = "LOCUST_SHAPE"


def shape_asked(argv: list[str], environ: dict[str, str]) -> bool:
    """Whether a Locust run asked for the config's shape (``--shape KIND`` or ``LOCUST_SHAPE``).
    Locust runs a shape class it finds in the locustfile instead of -u/-r/-t, and decides that
    when it imports the file, before parsing options: so load/locustfile.py offers its shape
    class only when asked for."""
    for i, arg in enumerate(argv):
        if arg.startswith("--shape="):
            return bool(arg.partition("=")[2])
        if arg == "--shape":
            return i + 1 < len(argv) and bool(argv[i + 1])
    return bool(environ.get(SHAPE_ENV))
