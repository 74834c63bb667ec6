"""Data, metrics and the training script behind glm_saver/scorer_weights.json (not shipped)."""
