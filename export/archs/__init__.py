"""Architectures found by the project's searches; every JSON file here is registered as timm model ``hmnas_<name>``."""
