"""The regime-3 codec: canonical S-expression reasoning, built-in domains, codebook, evaluation."""
