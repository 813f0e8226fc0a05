"""HM-NAS core: masks, supermodules, hierarchy rules, the Lightning step and the NNI strategy."""
