"""Test configuration: a deterministic hypothesis profile for CI."""

from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("ci")
