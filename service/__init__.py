"""The sharpcxr inference service (FastAPI); see :func:`service.app.create_app`."""
