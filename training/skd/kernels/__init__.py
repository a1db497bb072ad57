"""Per-method SKD kernels, one module per method (its paper cited there), each built on training.skd.core."""
