"""The HM-NAS core: supermodules, masks, hierarchy rules, the strategy, and architecture -> network."""

# NNI's strategy package first: importing its one-shot modules before it leaves ``nni.nas.strategy.DARTS`` (and the
# other one-shot strategies) an import-failure placeholder for the whole process (a circular import inside NNI).
import nni.nas.strategy  # noqa: F401
