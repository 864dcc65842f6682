"""sharpcxr: resolution-aware chest X-ray AI. This package holds the command line only.

``__version__`` is the one version number: the package's (``pyproject.toml`` reads it),
the HTTP API's (``/openapi.json``) and the README changelog's latest entry.
"""

__version__ = "0.10.0"
