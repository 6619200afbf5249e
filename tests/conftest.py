"""Test configuration: deterministic hypothesis runs, no timing-based failures."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# No deadlines (a loaded 2-core CI machine must not fail a test for being slow) and a
# derandomised search so that CI runs are reproducible.
settings.register_profile("depthflow", deadline=None, derandomize=True, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "depthflow"))

# Under pytest-xdist (`make test` runs one worker per core), each worker and the processes
# it starts use one intra-op thread: two workers with two threads each would oversubscribe
# a 2-core machine. Results do not depend on the thread count (tests compare values, never
# times).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread avoids oversubscribing a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
