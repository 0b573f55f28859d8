"""aweber-job: keeps an AWeber OAuth 2 integration authorized and runs its daily task."""

__version__ = "0.1.0"
