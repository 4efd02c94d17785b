"""The tenantflow workspace agent: the A2A server each workspace's EC2 instance runs at boot.

It registers with the platform using its one-time registration token, then sends heartbeats.
It must stay importable on the instance without the platform's packages (``domain``, ``db``, ``api``).
"""

__version__ = "0.1.0"
