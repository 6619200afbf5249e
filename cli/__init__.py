"""Command-line front end of depthflow (installed as ``depthflow.cli``)."""
