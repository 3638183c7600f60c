"""Replica implementations: local worker processes (and Ray actors later)."""
