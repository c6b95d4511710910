"""Operational helpers run by the Makefile and the Procfile (``python -m scripts.<name>``)."""
