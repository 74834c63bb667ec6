"""How hard is the user's latest ask? The complexity classifier and what it is made of.

- rules.py: `ComplexityClassifier` (the stable public API) and the configurable rules
  (keywords, regex rules, length against `token_threshold`), custom classifiers by dotted path;
- learned.py: the learned part of the score (weights in scorer_weights.json, written by
  training/train_scorer.py) over semantic.py (what the ask means: an offline WordLlama embedding,
  and the conversation's earlier asks as context), kinds.py (the kind of ask: reasoning, code and
  math against writing, chat, ...) and features.py (the ask's shape);
- calibration.py: the threshold for a `target_cloud_share` from a traffic sample.

    from glm_saver.classifier import ComplexityClassifier
    verdict = ComplexityClassifier().classify(messages)   # .score, .label, .reasons
"""

from glm_saver.classifier.rules import Classification, Classifier, ComplexityClassifier, Label, build_classifier, load_custom

__all__ = ["Classification", "Classifier", "ComplexityClassifier", "Label", "build_classifier", "load_custom"]
