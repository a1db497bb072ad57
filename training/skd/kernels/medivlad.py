"""MeDiVLAD (Guo et al., ISBI 2025): DINO label-free SKD pretraining and the DualVLAD aggregator.

DINO loss: the EMA teacher sees the n_t global crops, the student all n_s crops; for every pair (teacher crop iq,
student crop v != iq): CE(softmax((g_t - c) / tau_t), softmax(g_s / tau_s)), averaged over the batch and the
n_t * n_s - n_t pairs. The center c <- m c + (1 - m) mean(g_t) is returned, never mutated (pure function).
Outputs are stacked view-major: rows [v*B, (v+1)*B) hold view v, and the first n_t student views are the global ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.skd.core import soft_ce
from training.skd.teachers import ema_update_
from training.skd.transforms import center_sharpen
from training.skd.weights import cosine_schedule

__all__ = ["DualVLAD", "cosine_schedule", "dino_loss", "ema_update_", "multi_crop"]


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, n_s: int, n_t: int = 2,
              tau_s: float = 0.1, tau_t: float = 0.04, center_momentum: float = 0.9) -> dict[str, torch.Tensor]:
    """{loss, center (the updated one), pairs, kl = loss - mean teacher entropy}.

    Teacher rows and the center are detached here.
    """
    if student_out.shape[0] % n_s or teacher_out.shape[0] % n_t or n_t > n_s:
        raise ValueError("rows must be n_s * B (student) and n_t * B (teacher), with n_t <= n_s")
    teacher_out, center = teacher_out.detach(), center.detach()
    student_views = (student_out / tau_s).chunk(n_s)  # soft_ce applies tau=1 below, so divide here
    teacher_probs = F.softmax(center_sharpen(teacher_out, center, tau_t), dim=-1).chunk(n_t)
    terms = [soft_ce(student_views[v], teacher_probs=teacher_probs[iq])
             for iq in range(n_t) for v in range(n_s) if v != iq]
    all_probs = torch.cat(teacher_probs)
    entropy = -torch.xlogy(all_probs, all_probs).sum(-1).mean()
    new_center = center_momentum * center + (1 - center_momentum) * teacher_out.mean(dim=0, keepdim=True)
    loss = torch.stack(terms).mean()
    # CE = KL + H(P_t): the KL part is what the student can reduce (the CE itself rises while the teacher sharpens)
    return {"loss": loss, "center": new_center, "pairs": torch.tensor(len(terms)), "kl": loss.detach() - entropy}


def _shift(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Translate each [H, W] image by (dy, dx) pixels, zero fill."""
    b, h, w = images.shape
    pad = int(max(dy.abs().max(), dx.abs().max()))
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = (torch.arange(h)[None, :] + pad - dy[:, None])  # [B, H]
    cols = (torch.arange(w)[None, :] + pad - dx[:, None])  # [B, W]
    return padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def multi_crop(images: torch.Tensor, gen: torch.Generator, n_global: int = 2, n_local: int = 4, jitter: int = 1,
               noise: float = 0.1, local_size: int = 8) -> list[torch.Tensor]:
    """Views of [B, H, W] images: global = shift by +-jitter plus noise; local = a random local_size window resized
    to H x W (even local views) or the image with a random half cut out (odd local views). All randomness from gen."""
    b, h, w = images.shape
    views = []
    for _ in range(n_global):
        dy, dx = (torch.randint(-jitter, jitter + 1, (b,), generator=gen) for _ in range(2))
        views.append(_shift(images, dy, dx) + noise * torch.randn(images.shape, generator=gen))
    for i in range(n_local):
        if i % 2 == 0:
            y0 = torch.randint(0, h - local_size + 1, (b,), generator=gen)
            x0 = torch.randint(0, w - local_size + 1, (b,), generator=gen)
            rows = y0[:, None] + torch.arange(local_size)[None, :]
            cols = x0[:, None] + torch.arange(local_size)[None, :]
            crop = images[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
            view = F.interpolate(crop[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        else:
            side = torch.randint(0, 4, (b,), generator=gen)  # which half is cut: top, bottom, left, right
            yy, xx = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
            s = side[:, None, None]
            cut = ((s == 0) & (yy < h // 2)) | ((s == 1) & (yy >= h // 2)) | ((s == 2) & (xx < w // 2)) | (
                (s == 3) & (xx >= w // 2))
            view = images.masked_fill(cut, 0.0)
        views.append(view + noise * torch.randn(images.shape, generator=gen))
    return views


class DualVLAD(nn.Module):
    """[B, S, D] frame features -> [B, K*D] video descriptor (cluster-level VLAD + frame-level attention).

    a_k(x) = softmax_k(2 alpha c_k.x - alpha ||c_k||) on L2-normalised frames; r_fk = a_k(x_f)(x_f - c_k);
    w_f = softmax_f(w^T tanh(V vec(r_f)) / frame_temp); v_k = sum_f w_f r_fk, intra- then global L2 normalised.
    frame_attention=False gives plain NetVLAD (v_k = sum_f r_fk), the cluster-level-only baseline.
    """

    def __init__(self, num_clusters: int, dim: int, alpha: float = 1.0, frame_temp: float = 1.2,
                 centroids: torch.Tensor | None = None, frame_attention: bool = True) -> None:
        super().__init__()
        init = centroids.clone().float() if centroids is not None else torch.randn(num_clusters, dim)
        self.centroids = nn.Parameter(init)
        # the 1x1 assignment conv as a Linear, initialised from the centroids (learnable independently, as in NetVLAD)
        self.assign = nn.Linear(dim, num_clusters)
        with torch.no_grad():
            self.assign.weight.copy_(2 * alpha * init)
            self.assign.bias.copy_(-alpha * init.norm(dim=1))
        self.frame_temp, self.frame_attention = frame_temp, frame_attention
        kd = num_clusters * dim
        if frame_attention:
            self.V = nn.Linear(kd, kd, bias=False)
            self.w = nn.Linear(kd, 1, bias=False)

    def forward(self, x: torch.Tensor, return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor,
                                                                                                torch.Tensor]:
        x = F.normalize(x, dim=-1)  # [B, S, D]
        a = torch.softmax(self.assign(x), dim=-1)  # [B, S, K]
        r = a[..., None] * (x[:, :, None, :] - self.centroids[None, None])  # [B, S, K, D]
        if self.frame_attention:
            flat = r.flatten(2)  # [B, S, K*D]
            weights = torch.softmax(self.w(torch.tanh(self.V(flat))).squeeze(-1) / self.frame_temp, dim=1)  # [B, S]
        else:
            weights = torch.ones(r.shape[:2], dtype=r.dtype, device=r.device)
        v = (weights[..., None, None] * r).sum(dim=1)  # [B, K, D]
        out = F.normalize(F.normalize(v, dim=-1).flatten(1), dim=-1)
        return (out, weights) if return_weights else out
