"""Per-method SKD kernels (spec sections 1-8), each built on training.skd.core."""
