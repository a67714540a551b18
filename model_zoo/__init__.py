"""Model families, tiny test configs and the real checkpoints usable offline."""
