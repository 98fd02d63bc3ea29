"""Polling for a condition with a deadline: tests wait for real processes, never for fixed times."""

import time


def wait_until(condition, timeout: float = 30.0, what: str = "", detail=lambda: ""):
    """Poll `condition()` until it is truthy and return its value; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or getattr(condition, '__name__', 'condition')}: "
                                 f"not within {timeout} s\n{detail()}")
        time.sleep(0.05)
    return value
