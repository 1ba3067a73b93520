"""Pure math on what the model pass summed: the CHES formulas, the pairing rules, selection and statistics.

No model, no files: every function here takes tensors or columns and returns numbers. The formulas
(:mod:`ches.scores.formulas`) are re-exported, so ``ches.scores.ln_ches(...)`` recomputes a score from
saved embeddings (:func:`ches.load_embeddings`).
"""

from .formulas import ches, edit_distance, last_hidden_ip, ln_ches

__all__ = ["ches", "ln_ches", "last_hidden_ip", "edit_distance"]
