"""What several search systems share, once: architecture encodings of any NNI space, generators, surrogates and
Pareto fronts."""
