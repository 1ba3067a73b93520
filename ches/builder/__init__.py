"""``ches.pairs``: preference pairs built from prompts with several rated responses (UltraFeedback-style), chosen
by CHES so that DPO does not lower the preferred response's likelihood."""
