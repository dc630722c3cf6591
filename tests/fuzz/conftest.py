"""Property-based fuzzing (hypothesis) of analyze, report, compare and gate (issue 15 item 6).

Helpers live in fuzzing.py. Profiles: ``ci`` (the default: derandomized, no example database, so every CI run tries the same cases)
and ``dev`` (random, 10x the examples) for a local hunt: ``HYPOTHESIS_PROFILE=dev pytest tests/fuzz``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
