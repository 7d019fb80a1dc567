"""Disk only: the verified, content-addressed media cache."""
