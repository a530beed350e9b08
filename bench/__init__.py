"""Benchmarks side by side: ``python -m bench [overhead|fidelity|all] [--quick]`` (see bench/__main__.py)."""
