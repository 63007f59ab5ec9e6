"""Compiled contract artifacts (package data; regenerate with ``city-server chain compile``)."""
