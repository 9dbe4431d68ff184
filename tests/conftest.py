"""Shared test settings: a deterministic hypothesis profile and float32 defaults."""
from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=25, print_blob=True)
settings.load_profile("ci")
