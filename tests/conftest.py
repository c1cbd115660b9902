"""Suite-wide settings."""

from __future__ import annotations

from hypothesis import settings

# Property tests run on busy 2-core CI machines: a per-example deadline would
# turn load into flakiness without telling us anything about the parsers.
settings.register_profile("msm", deadline=None)
settings.load_profile("msm")
