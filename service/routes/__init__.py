"""HTTP routes: thin functions over :mod:`service.pipeline` and the registry."""
