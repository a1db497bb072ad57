"""Duet indexer: offline encoding into Lucene impact + FAISS indexes (built under issue 3). Imports core only."""
