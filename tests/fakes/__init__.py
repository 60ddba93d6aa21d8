"""Fakes of third-party services, as real local servers (see README.md)."""
