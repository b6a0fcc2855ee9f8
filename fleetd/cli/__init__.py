"""The ``fleetd`` command line: typer commands that call the layers below and format what they return.

Commands import their dependencies inside the function so that ``fleetd --help`` and quick commands start
fast (``python -X importtime -m fleetd`` shows what each import costs).
"""
