"""The reliability harness: generated and hostile input, faults, load, concurrency and access against a real service."""
