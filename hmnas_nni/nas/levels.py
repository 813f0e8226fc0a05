"""Temporary mask states of a supernet: every entry on, or the learned scores thresholded at another level.

Both the latency table (which measures every candidate, so needs them all on) and the family of nested
networks (the scores thresholded at increasing levels) look at the supernet under masks it did not learn;
:func:`masks_at` sets such a state, re-applies the hierarchy rules, and restores the learned one afterwards,
exactly (scores, thresholds and the rules' state).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping

import torch

from .hierarchy import Hierarchy

#: A score every threshold passes: the "all on" state.
ON = 1e9


@contextlib.contextmanager
def masks_at(hierarchy: Hierarchy, level: float | None = None,
             allowed: Mapping[str, list[int]] | None = None,
             scores: float | Mapping[str, torch.Tensor] | None = None) -> Iterator[Hierarchy]:
    """The supernet with each mask thresholded at ``level`` (default: its own ``tau``), every entry outside
    ``allowed`` (mask name -> entry indices) switched off, and, with ``scores``, the scores replaced (one value
    for all, or a tensor per mask name)."""
    masks = hierarchy.masks
    saved = {name: (m.scores.detach().clone(), m.tau) for name, m in masks.items()}
    events, reported = hierarchy.forced_events, set(hierarchy._reported)
    quiet = _Quiet()
    logging.getLogger(Hierarchy.__module__).addFilter(quiet)  # a forced path here is not the search's event
    try:
        with torch.no_grad():
            for name, m in masks.items():
                if isinstance(scores, Mapping):
                    m.scores.copy_(scores[name])
                elif scores is not None:
                    m.scores.fill_(scores)
                if level is not None:
                    m.tau = level
                if allowed is not None:
                    keep = torch.zeros_like(m.scores, dtype=torch.bool)
                    keep[allowed.get(name, [])] = True
                    m.scores.copy_(torch.where(keep, m.scores, torch.full_like(m.scores, -float("inf"))))
        hierarchy.apply()
        yield hierarchy
    finally:
        with torch.no_grad():
            for name, m in masks.items():
                m.scores.copy_(saved[name][0])
                m.tau = saved[name][1]
        hierarchy.apply()
        hierarchy.forced_events, hierarchy._reported = events, reported
        logging.getLogger(Hierarchy.__module__).removeFilter(quiet)


class _Quiet(logging.Filter):
    """Drops the hierarchy's forced-path warnings while a temporary state is applied."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def all_on(hierarchy: Hierarchy) -> contextlib.AbstractContextManager[Hierarchy]:
    """The whole supernet: every op, edge, node, channel step and block on."""
    return masks_at(hierarchy, scores=ON)


def kept_entries(hierarchy: Hierarchy) -> dict[str, list[int]]:
    """Mask name -> the entries the forward pass executes now."""
    return {name: list(m.live) for name, m in hierarchy.masks.items()}
