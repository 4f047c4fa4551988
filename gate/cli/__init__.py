"""The ``irisgate`` command line: a client of the gate's HTTP API (see :mod:`gate.cli.app`).

It imports nothing of the gate's server side, so it starts fast and runs wherever httpx,
typer and rich are installed."""
