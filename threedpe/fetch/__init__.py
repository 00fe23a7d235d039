"""Getting the real weights: where each file comes from (``sources``), ``download`` (verified by loading it into its
network, then converted), ``doctor`` and ``push-weights`` (``push``). Above :mod:`threedpe.models`, which the
verification loads; below the pipeline and the front ends."""
