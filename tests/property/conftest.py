"""Hypothesis settings for the property tests: reproducible in CI, bounded in time.

The ``anchorlab`` profile (loaded by default, override with ``HYPOTHESIS_PROFILE=<name>``):
``derandomize=True`` so every run explores the same examples (a CI failure reproduces locally),
no per-example ``deadline`` (the first example of a test pays torch/torchvision warm-up and the CI
machine is shared and loaded, so wall-clock deadlines would only produce flaky ``DeadlineExceeded``),
and 50 examples per test. ``HealthCheck.too_slow`` is suppressed only on the loader tests, which write
a few small files per example by design (see ``test_loaders_props.py``); it is not suppressed here.
``HYPOTHESIS_PROFILE=thorough`` runs 1000 examples per test with random seeds for local bug hunting.

The suite-wide ``tests/conftest.py`` runs everything on one intra-op thread.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("anchorlab", deadline=None, max_examples=50, derandomize=True, database=None)
settings.register_profile("thorough", deadline=None, max_examples=1000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "anchorlab"))
