"""The embedded local stack: real servers from PyPI wheels, for development, demos and tests.

Nothing here is imported by the production worker or API.
"""
