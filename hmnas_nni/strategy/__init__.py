"""Multi-trial NNI strategies of the source papers (one system per module), beside NNI's own in ``nni.nas.strategy``."""
