"""Evidence about the scores: ``ches validate`` (DPO runs on kept vs removed pairs), ``ches audit`` (a trained
model's displacement against the scores), the advice both give, and the small DPO probes they train."""
