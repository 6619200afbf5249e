"""Test configuration: deterministic hypothesis runs, no timing-based failures."""

import os

from hypothesis import HealthCheck, settings

# No deadlines (a loaded 2-core CI machine must not fail a test for being slow) and a
# derandomised search so that CI runs are reproducible.
settings.register_profile("depthflow", deadline=None, derandomize=True, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "depthflow"))
