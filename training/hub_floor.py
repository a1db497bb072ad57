"""Hub control by weight floors: each term may stay active in at most a set share of the training images.

A word in most captions' images ("man", "two") otherwise fills the spare budget of nearly every image vector: its
chip tells the reader nothing and its posting list is the inverted index's longest. The floor of such a term is the
weight that leaves it on the training images where it is strongest; the head drops its weights at or under it
(core/sparse_head.py). It is recalibrated at each epoch's end, so the next epoch's steps train with it in force.
"""

from __future__ import annotations

import torch

from core.model import DuetModel
from core.sparse_head import hub_floor

CHUNK = 4096  # images encoded at once: the (chunk, terms) weights stay small on any vocabulary


@torch.no_grad()
def calibrate_hub_floor(model: DuetModel, image_features: torch.Tensor, max_share: float) -> dict[str, float]:
    """Set ``model``'s image term floors from ``image_features`` (the training images, on the model's device).

    Returns the number of terms that got a floor and the largest share of the images a term was active in before.
    """
    head = model.sparse_head
    if head.image_term_floor is None:
        raise ValueError("this model has no hub floor: set model.sparse_head.image_term_max_share")
    was_training = model.training
    model.eval()
    head.image_term_floor.zero_()
    chunks = image_features.split(CHUNK)
    active = torch.zeros(head.num_terms, device=image_features.device)
    for chunk in chunks:
        active += (model.encode_image(chunk).sparse > 0).sum(dim=0)
    allowed = int(max_share * image_features.shape[0])
    hubs = (active > allowed).nonzero().squeeze(1)
    if hubs.numel():
        weights = torch.cat([model.encode_image(chunk).sparse[:, hubs] for chunk in chunks])
        head.image_term_floor[hubs] = hub_floor(weights.float(), allowed)
    model.train(was_training)
    return {"hub_terms": int(hubs.numel()), "largest_share_before": float(active.max()) / image_features.shape[0]}
