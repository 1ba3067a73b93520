"""One pass of the decoder body: loading the model (:mod:`~ches.model.models`), batching token sequences
(:mod:`~ches.model.batches`), attention over packed rows, the layouts, the engine that sums hidden states
per completion (:mod:`~ches.model.engine`), and log-probs from those same states (:mod:`~ches.model.logps`)."""
