"""Integrations: start loopstat with a web framework's app, stop it on shutdown."""
