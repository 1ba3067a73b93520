"""A scoring run around the model pass: rows cut into chunks, the chunk loop (:mod:`~ches.run.runner`),
the resumable cache, processes sharing the work (:mod:`~ches.run.distributed`), the progress bar and
the run's record (:mod:`~ches.run.runs`). Device, distributed and caching concerns live here, not in the math."""
