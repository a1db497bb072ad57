"""Duet indexer: offline encoding into Lucene impact + FAISS indexes. Imports core only."""
