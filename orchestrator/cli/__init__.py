"""The ``edgefarm`` command line: parses arguments (typer) and renders (rich), nothing more."""
