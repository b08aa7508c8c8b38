"""Standalone data-preparation scripts (run them as ``python data_prep/<name>.py``)."""
