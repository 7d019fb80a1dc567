"""The project's reference source: the server side of the device protocol, for tests and development.

Kept outside `agent/`: the agent never depends on it.
"""
