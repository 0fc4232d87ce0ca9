"""A worker with a fault injected, for the fault tests: `celery -A tests.faults:app worker`
runs the real worker whose every job (or batch of jobs) first sleeps RAPID_ADAPT_TEST_JOB_DELAY
seconds (a slow job to kill, cancel or wait for), and with RAPID_ADAPT_TEST_JOB_RAISE set raises that
message instead of adapting (a bug, CUDA out of memory). Production code has no such hook."""

import os
import time

import worker.tasks as tasks
from worker.celery_app import app  # noqa: F401  (what `celery -A` loads)

_run, _run_batch = tasks.run_adaptation, tasks.run_adaptations


def faulty(run):
    def faulty_run(*args, **kwargs):
        time.sleep(float(os.environ.get("RAPID_ADAPT_TEST_JOB_DELAY", "0")))
        if os.environ.get("RAPID_ADAPT_TEST_JOB_RAISE"):
            raise RuntimeError(os.environ["RAPID_ADAPT_TEST_JOB_RAISE"])
        return run(*args, **kwargs)

    return faulty_run


tasks.run_adaptation, tasks.run_adaptations = faulty(_run), faulty(_run_batch)  # a batch sleeps once
