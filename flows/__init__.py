"""Thin Prefect 3 wrappers over the component functions (orchestration issue #5)."""
