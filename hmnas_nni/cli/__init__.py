"""The ``hmnas`` command line."""
