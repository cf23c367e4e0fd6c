"""Clients of the platforms' manager APIs. Knows nothing of orchestrators."""
