"""bangtin-agent: the player agent for public electronic bulletin boards."""

__version__ = "0.1.0"
