"""CPU mini-experiments of the SKD methods: ``python -m training.experiments NAME|all|table``."""
