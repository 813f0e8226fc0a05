"""Architectures found by the project's searches, kept as data: each ``<name>.json`` is timm model ``hmnas_<name>``.

Adding a shipped architecture is adding its ``arch.json`` to this folder; no code changes.
"""

from __future__ import annotations

from pathlib import Path

ARCH_DIR = Path(__file__).parent

# What the generic ``hmnas`` model builds when no ``arch`` is given: the Fashion-MNIST search result.
DEFAULT_ARCH = ARCH_DIR / "nb201_fmnist.json"


def shipped_architectures() -> list[Path]:
    """Every architecture file shipped with the package, in name order."""
    return sorted(ARCH_DIR.glob("*.json"))
