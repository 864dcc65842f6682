"""The sharpcxr inference service (FastAPI); see :func:`service.app.create_app`."""

__version__ = "0.3.0"
