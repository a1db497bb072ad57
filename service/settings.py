"""Service settings: where the index is, and the limits every request is held to.

Each setting comes from a flag of ``python -m service``, else the environment (``DUET_`` + the name in capitals,
e.g. ``DUET_INDEX_DIR``, ``DUET_MAX_TOP_K``), else its default here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUET_", extra="forbid", frozen=True)

    index_dir: Path = Field(Path("indexes/flickr8k"), description="Index directory built by `python -m indexer` "
                            "(served as one collection, named after the directory).")
    data_dir: Path | None = Field(None, description="Serve every collection under this directory by name, with "
                                  "its aliases and snapshots (wins over index_dir).")
    default_collection: str | None = Field(None, description="With data_dir: the collection (or alias) the routes "
                                           "without a collection name serve; default: the only collection, if "
                                           "there is one.")
    checkpoint: Path | None = Field(None, description="Checkpoint to load (default: the one the index names).")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$", description="Where queries are encoded; on a "
                        "CUDA device the dense leg there scores every item exactly (FAISS on the CPU otherwise). "
                        "The embedded engine's: --engine ray refuses a CUDA device.")
    collection_root: Path | None = Field(None, description="Image root (default: the one the index recorded).")
    engine: Literal["embedded", "ray"] = Field("embedded", description="Where the collection is served: this "
                                               "process, or Ray Serve deployments (a sharded collection).")
    address: str | None = Field(None, description="Ray cluster address (host:port) for --engine ray; default: the "
                                "RAY_ADDRESS setting.")
    replicas: int = Field(2, ge=1, le=64, description="Ray Serve replicas of each shard (--engine ray).")
    ingress_replicas: int = Field(1, ge=1, le=64, description="Ray Serve replicas of the ingress, which encodes "
                                  "queries and merges the shards' answers (--engine ray).")
    shard_timeout_s: float = Field(2.0, gt=0, le=600, description="How long a shard call waits for a replica before "
                                   "it is tried again (--engine ray).")
    shard_attempts: int = Field(3, ge=1, le=10, description="Tries of a shard read before its shard is reported "
                                "unavailable (503) (--engine ray).")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Larger request bodies get 413.")
    max_image_pixels: int = Field(40_000_000, gt=0, description="Larger images (or decompression bombs) get 413.")
    max_text_chars: int = Field(1000, gt=0)
    max_top_k: int = Field(1000, gt=0)
    max_offset: int = Field(10_000, ge=0)
    max_candidate_k: int = Field(5000, gt=0)
    max_captions: int = Field(32, gt=0, description="Most captions one image write may carry.")
    max_pending: int = Field(64, gt=0, le=10_000, description="Requests that may hold engine work at once (waiting "
                             "or running); more get 503 with Retry-After, before anything decodes their body.")
    max_queue_wait_s: float = Field(0.5, gt=0, le=600, description="A request that would wait longer than this for "
                                    "the engine behind those admitted (their count times the engine's recent time per "
                                    "request) gets 503 with Retry-After at once.")
    queue_timeout_s: float = Field(5.0, gt=0, le=600, description="How long an admitted request may wait for the "
                                   "engine; past it, it is dropped with 503 rather than computed for no one.")
    header_timeout_s: float = Field(10.0, gt=0, le=600, description="A connection that has not sent a request's "
                                    "complete headers within this long is closed.")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="Longest wait for the next part of a request "
                                  "body; past it, 408.")
    body_deadline_s: float = Field(60.0, gt=0, le=3600, description="Longest time a whole request body may take to "
                                   "arrive; past it, 408.")
    min_body_rate: int = Field(8192, ge=0, description="Slowest mean rate, in bytes per second, a request body may "
                               "arrive at once its first body_rate_grace_s have passed; slower: 408 (0: no minimum).")
    body_rate_grace_s: float = Field(5.0, ge=0, le=3600, description="How long a body may arrive at any rate before "
                                     "min_body_rate applies.")
    max_buffered_body_bytes: int = Field(256 * 1024 * 1024, gt=0, description="Bytes of request bodies held at once "
                                         "while they arrive (each counted at its Content-Length); past it, 503 with "
                                         "Retry-After.")
    drain_timeout_s: float = Field(25.0, gt=0, le=3600, description="On SIGTERM or SIGINT: how long requests in "
                                   "progress and a running compaction may take to finish (new requests get 503 "
                                   "meanwhile); past it, a compaction is rolled back and the process exits.")
    auto_compact_ratio: float = Field(0.1, ge=0, description="Compact in the background once the items written and "
                                      "deleted since the last compaction reach this fraction of the published "
                                      "ones (a collection under 10,000 items counts as 10,000); 0: only on request.")
    # SecretStr: the key never shows in a repr, a log line or a validation error
    api_key: SecretStr | None = Field(None, description="Bearer key the write API requires (sent as "
                                      "'Authorization: Bearer KEY'); unset or empty: writes are disabled.")
    read_api_key: SecretStr | None = Field(None, description="Bearer key searches and item reads require (the "
                                           "write key works too); unset or empty: reads are open.")

    @field_validator("device")
    @classmethod
    def _device_present(cls, device: str) -> str:
        if device != "cpu":
            import torch

            if not torch.cuda.is_available() or torch.device(device).index not in (None, *range(
                    torch.cuda.device_count())):
                raise ValueError(f"{device}: no such CUDA device on this machine")
        return device

    @model_validator(mode="after")
    def _device_served(self) -> ServiceSettings:
        if self.engine == "ray" and self.device != "cpu":  # refused rather than silently encoded on a CPU
            raise ValueError(f"--device {self.device} applies to the embedded engine: with --engine ray the ingress "
                             "replicas encode queries and the shards score them on their nodes' CPUs")
        return self
