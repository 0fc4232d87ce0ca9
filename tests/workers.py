"""Workers with a fault injected (tests/faults.py), started in a stack of bench/stack.py."""


def slow_worker(stack, delay: float, **env):
    """Start a worker of `stack` whose every job first sleeps `delay` seconds."""
    return stack.start_worker("tests.faults:app", test_job_delay=delay, **env)
