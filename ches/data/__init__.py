"""Rows in, rows out, without a model: reading the user's files (:mod:`~ches.data.inputs`), the preference
formats (:mod:`~ches.data.formats`), TRL's token sequences (:mod:`~ches.data.tokens`), the columns ches
writes (:mod:`~ches.data.columns`), integrity flags and atomic export. Nothing here imports torch."""
