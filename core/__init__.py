"""Duet core: what training, indexer and service share (model, sparse head, vocabulary, cache, checkpoints).

This package imports no other project package.
"""
