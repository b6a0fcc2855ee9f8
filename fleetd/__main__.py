"""``python -m fleetd``: the same entry point as the ``fleetd`` console script."""

from fleetd.cli.app import main

main()
