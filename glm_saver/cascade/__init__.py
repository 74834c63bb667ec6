"""The draft/verify cascade of the speculative strategies: local drafts, scored (scoring.py), then
accepted, verified by Cerebras, or handed to it (speculator.py); its counters (stats.py)."""

from glm_saver.cascade.scoring import DraftFacts, Score, best_draft, score_drafts
from glm_saver.cascade.speculator import Outcome, Speculator
from glm_saver.cascade.stats import SpeculativeStats

__all__ = ["DraftFacts", "Outcome", "Score", "SpeculativeStats", "Speculator", "best_draft", "score_drafts"]
