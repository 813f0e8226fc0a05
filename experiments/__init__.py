"""Experiment scripts: searches and the strategy comparison."""
