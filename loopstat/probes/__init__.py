"""Probes: each measures one aspect of a loop's health and knows nothing of sending."""
