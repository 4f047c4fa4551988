"""``python -m gate.cli``: the same as the ``irisgate`` console script."""

from gate.cli.app import main

main()
