"""How fast this machine is right now, next to every benchmark's figures.

On a shared VM the same code runs up to twice as slow from one minute to the next (noisy
neighbours do not show as steal time here), so a latency figure alone cannot say whether a change
helped. Three short probes, each the best of several tries so one interruption does not count:

- ``python_us``: a fixed pure-Python loop (interpreter speed);
- ``numpy_us``: 1,000 small numpy calls like the engine's (argmax and minimum on 80 floats);
- ``switch_us``: one round trip between two threads over a socket pair (what every gRPC call and
  Redis read pays in wake-ups; expensive on this VM).

Compare runs by these: a run whose probes are 1.5x slower had a 1.5x slower machine.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import numpy as np


def _best(fn: Callable[[], None], tries: int) -> float:
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def _python_loop() -> None:
    total = 0
    for i in range(20_000):
        total += i % 7
    if total < 0:  # keep the loop from being optimised away in spirit
        raise AssertionError


def _numpy_calls() -> None:
    gain = np.linspace(0.0, 1.0, 80, dtype=np.float32)
    row = np.linspace(1.0, 0.0, 80, dtype=np.float32)
    for _ in range(500):
        gain.argmax()
        np.minimum(gain, row, out=gain)


def _switch_round_trips(n: int = 200) -> float:
    a, b = socket.socketpair()

    def echo() -> None:
        for _ in range(n):
            b.sendall(b.recv(16))

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    t0 = time.perf_counter()
    for _ in range(n):
        a.sendall(b"x")
        a.recv(16)
    elapsed = time.perf_counter() - t0
    t.join()
    a.close()
    b.close()
    return elapsed / n * 1e6


def speed_probe() -> dict[str, float]:
    """Probe figures in microseconds (lower is faster); takes about a quarter of a second."""
    return {
        "python_us": round(_best(_python_loop, 7), 1),
        "numpy_us": round(_best(_numpy_calls, 7), 1),
        "switch_us": round(min(_switch_round_trips() for _ in range(3)), 1),
    }


def probe_line(p: dict[str, float]) -> str:
    return (
        f"machine probe, µs: python {p['python_us']:.0f} · numpy {p['numpy_us']:.0f}"
        f" · thread round trip {p['switch_us']:.0f}"
    )
