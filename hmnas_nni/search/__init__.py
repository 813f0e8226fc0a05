"""The one-shot search layer: configs, data, the NNI experiment run, monitoring and resume."""
