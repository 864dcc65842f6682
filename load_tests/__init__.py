"""Load generators for a running sharpcxr service (see ``load_tests/README.md``)."""
