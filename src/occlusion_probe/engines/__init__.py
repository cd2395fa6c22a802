"""Evaluation engines: `dense` runs the whole model on every occluded image (any model);
`incremental` recomputes only the part of a conv stack an occlusion changes (exact)."""
