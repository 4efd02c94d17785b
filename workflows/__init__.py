"""Workflows: deterministic orchestration only; every effect is an activity."""
