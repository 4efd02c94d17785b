"""Shared models and settings, imported by workflows, activities and the API alike."""
