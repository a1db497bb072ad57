from __future__ import annotations

import pytest
import torch

from core.backbone import build_backbone
from core.config import BackboneConfig
from tests.conftest import TINY_MODEL


def test_tiny_open_clip_backbone_cuts_before_the_projection(tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    b = tiny_backbone
    assert b.embed_dim == 32
    # features are the towers' widths (pre-projection), not embed_dim
    pixels = torch.randn(2, 3, 32, 32)
    assert b.image_features(pixels).shape == (2, 32)
    tokens = b.tokenizer(["a red square", "a blue dot"])
    assert b.text_features(tokens).shape == (2, 32)
    assert b.image_projection.shape == (32, 32) and b.text_projection.shape == (32, 32)
    assert len(b.vocabulary) == 49408 == b.token_embedding.shape[0]
    assert {49406, 49407, 0} <= b.vocabulary.special_ids


def test_projection_weights_reproduce_open_clip_embeddings(tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    import open_clip

    b = tiny_backbone
    reference = open_clip.create_model("duet-tiny-test", pretrained=None)
    reference.load_state_dict({**b.clip.state_dict(), "visual.proj": b.image_projection.T,
                               "text_projection": b.text_projection.T}, strict=True)
    reference.eval()
    pixels = torch.randn(3, 3, 32, 32)
    tokens = b.tokenizer(["a red square", "green", "the dot is blue"])
    with torch.no_grad():
        assert torch.allclose(reference.encode_image(pixels), b.image_features(pixels) @ b.image_projection.T,
                              atol=1e-5)
        assert torch.allclose(reference.encode_text(tokens), b.text_features(tokens) @ b.text_projection.T,
                              atol=1e-5)


def test_fingerprint_is_stable_and_tracks_the_weights() -> None:
    config = BackboneConfig(kind="open_clip", model_name=TINY_MODEL)
    assert build_backbone(config).fingerprint == build_backbone(config).fingerprint
    other = BackboneConfig(kind="open_clip", model_name=TINY_MODEL, init_seed=1)
    assert build_backbone(other).fingerprint != build_backbone(config).fingerprint


def test_unknown_model_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown open_clip model name 'ViT-Nope'"):
        build_backbone(BackboneConfig(kind="open_clip", model_name="ViT-Nope"))


def test_missing_local_checkpoint_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "weights.pt"
    with pytest.raises(FileNotFoundError, match="weights.pt"):
        build_backbone(BackboneConfig(kind="open_clip", model_name=TINY_MODEL, pretrained=str(missing)))


def test_local_open_clip_checkpoint_is_loaded(tmp_path, tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    import open_clip

    model = open_clip.create_model("duet-tiny-test", pretrained=None)
    torch.nn.init.constant_(model.visual.proj, 0.5)
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    b = build_backbone(BackboneConfig(kind="open_clip", model_name=TINY_MODEL, pretrained=str(path)))
    assert torch.all(b.image_projection == 0.5)
    assert b.fingerprint != tiny_backbone.fingerprint


def test_packaged_weight_mapping_covers_every_tensor() -> None:
    import timm

    from core import packaged

    trunk = timm.create_model(packaged.TIMM_NAME, pretrained=False, num_classes=0)
    packaged.load_efficientnet_trunk(trunk, packaged.efficientnet_weights_path())  # strict: raises on any gap


def test_packaged_weight_mapping_fails_loudly_on_a_shape_mismatch() -> None:
    import timm

    from core import packaged

    wrong = timm.create_model("tf_efficientnet_lite1", pretrained=False, num_classes=0)
    with pytest.raises(packaged.WeightMappingError, match="do not fit"):
        packaged.load_efficientnet_trunk(wrong, packaged.efficientnet_weights_path())


def test_packaged_backbone() -> None:
    b = build_backbone(BackboneConfig())
    assert (b.image_feature_dim, b.text_feature_dim, b.embed_dim, b.text_width) == (1280, 384, 256, 384)
    assert len(b.vocabulary) == 30522
    tok = b.vocabulary.tokens
    for special in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[unused0]"):
        assert tok.index(special) in b.vocabulary.special_ids
    assert tok.index("dog") not in b.vocabulary.special_ids
    # MiniLM weights are loaded: two paraphrases are closer than an unrelated caption
    feats = torch.nn.functional.normalize(
        b.text_features(b.tokenizer(["a dog runs on grass", "a puppy running in a field", "a red car"])), dim=-1)
    assert feats[0] @ feats[1] > feats[0] @ feats[2] + 0.2
