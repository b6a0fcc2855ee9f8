"""Developer tools shipped with fleetd: small generators and checks for tests, quickstarts and demos.

They live in the package (not under ``tests/``) so a quickstart or a CI job can run them with
``python -m fleetd.tools.<name>`` from an installed fleetd, without a checkout.
"""
