"""Polling for a condition with a deadline: tests wait for real processes, never for fixed times."""

import time


FIRST_PAUSE, LONGEST_PAUSE = 0.05, 0.25


def wait_until(condition, timeout: float = 30.0, what: str = "", detail=lambda: "",
               longest_pause: float = LONGEST_PAUSE):
    """Poll `condition()` until it is truthy and return its value; fail naming `what` at the deadline.

    The pause between polls grows from 50 ms to 250 ms: a quick condition is seen at once, and a long
    wait does not spend a core on queries while the processes under test need it. A condition that
    holds only briefly passes a shorter `longest_pause`."""
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or getattr(condition, '__name__', 'condition')}: "
                                 f"not within {timeout} s\n{detail()}")
        time.sleep(pause)
        pause = min(longest_pause, pause * 1.5)
    return value
