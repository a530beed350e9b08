"""Command line: ``python -m loopstat watch|demo|run`` and the ``loopstat-run`` script."""
