"""GAN losses: adversarial objectives, gradient penalties, relativistic and feature-matching losses.

Discriminator outputs may be a tensor of any shape (one logit per image, or a PatchGAN map) or,
for multiscale discriminators, a list with one entry per scale: a tensor, or a list of that
scale's intermediate features whose *last* element is the prediction (pix2pixHD / SPADE
``getIntermFeat`` layout). Losses over a list are averaged over the scales, as SPADE's GANLoss
(pix2pixHD sums them; multiply by the number of scales to get its value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GANLoss", "feature_matching_loss", "gradient_penalty", "r1_penalty",
           "relativistic_average_loss"]

GAN_MODES = ("vanilla", "lsgan", "hinge", "wgan", "wgangp")

Prediction = torch.Tensor | Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]]


def _predictions(pred: Prediction) -> list[torch.Tensor]:
    """The prediction tensor of each scale: ``pred`` itself, or the last of each inner list."""
    if isinstance(pred, torch.Tensor):
        return [pred]
    if len(pred) == 0:
        raise ValueError("fastgan.losses: got an empty list of discriminator outputs")
    out = []
    for scale in pred:
        if isinstance(scale, torch.Tensor):
            out.append(scale)
        elif len(scale) and isinstance(scale[-1], torch.Tensor):
            out.append(scale[-1])
        else:
            raise ValueError("fastgan.losses: each scale of a multiscale output must be a tensor "
                             "or a non-empty list of feature tensors (prediction last)")
    return out


class GANLoss(nn.Module):
    """The adversarial loss of one GAN objective, for D and for G.

    ``loss(pred, target_is_real, for_discriminator=True)`` -> scalar, ``pred`` raw D outputs
    (logits, no sigmoid) of any shape, or a multiscale list (see the module docstring).

    modes:
    - ``vanilla``: BCE with logits against ``real_label`` / ``fake_label`` (DCGAN, pix2pix).
    - ``lsgan``: MSE against the labels (Mao et al. 2017; CycleGAN's default).
    - ``hinge``: D: mean(relu(1 - pred)) for real, mean(relu(1 + pred)) for fake; G: -mean(pred)
      (SAGAN, BigGAN, SPADE). For G only ``target_is_real=True`` means anything.
    - ``wgan`` / ``wgangp``: -mean(pred) for real, mean(pred) for fake, for D and G alike; the
      gradient penalty of WGAN-GP is :func:`gradient_penalty`, added by the caller.
    Label values only apply to vanilla and lsgan; the target tensor broadcasts to ``pred``.
    """

    def __init__(self, mode: str = "vanilla", real_label: float = 1.0,
                 fake_label: float = 0.0) -> None:
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"fastgan.losses.GANLoss: unknown mode {mode!r}; choose one of "
                             f"{', '.join(GAN_MODES)}")
        self.mode = mode
        self.real_label, self.fake_label = float(real_label), float(fake_label)

    def extra_repr(self) -> str:
        if self.mode in ("vanilla", "lsgan"):
            return f"mode={self.mode!r}, real_label={self.real_label}, fake_label={self.fake_label}"
        return f"mode={self.mode!r}"

    def _single(self, pred: torch.Tensor, target_is_real: bool,
                for_discriminator: bool) -> torch.Tensor:
        if self.mode in ("vanilla", "lsgan"):
            label = self.real_label if target_is_real else self.fake_label
            # A 0-d target expanded to pred's shape: no label-sized allocation per call.
            target = pred.new_tensor(label).expand_as(pred)
            if self.mode == "vanilla":
                return F.binary_cross_entropy_with_logits(pred, target)
            return F.mse_loss(pred, target)
        if self.mode == "hinge":
            if not for_discriminator:
                if not target_is_real:
                    raise ValueError("fastgan.losses.GANLoss: the hinge generator loss is "
                                     "-mean(D(G(z))); call it with target_is_real=True")
                return -pred.mean()
            return F.relu(1 - pred).mean() if target_is_real else F.relu(1 + pred).mean()
        return -pred.mean() if target_is_real else pred.mean()

    def forward(self, pred: Prediction, target_is_real: bool,
                for_discriminator: bool = True) -> torch.Tensor:
        preds = _predictions(pred)
        losses = [self._single(p, target_is_real, for_discriminator) for p in preds]
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def _sum_outputs(out: Prediction) -> torch.Tensor:
    """Sum of every prediction: d(sum)/dx is the per-sample gradient of each sample's outputs."""
    return sum(p.sum() for p in _predictions(out))


def gradient_penalty(D: Callable[..., Prediction], real: torch.Tensor, fake: torch.Tensor,
                     weight: float = 10.0, center: float = 1.0, d_args: Sequence = (),
                     d_kwargs: dict | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP's penalty (Gulrajani et al. 2017): weight * E[(||grad_x D(x_hat)||_2 - center)^2].

    x_hat = alpha * real + (1 - alpha) * fake with alpha ~ U[0, 1) drawn per sample (shape
    [N, 1, ..., 1]); real/fake [N, ...] are detached. ``D(x_hat, *d_args, **d_kwargs)`` (class
    labels, for instance). The gradient is taken with create_graph=True, so backward of the
    penalty trains D. The 2-norm is per sample over all non-batch dimensions. Returns a scalar.
    """
    if real.shape != fake.shape:
        raise ValueError(f"fastgan.losses.gradient_penalty: real and fake must have the same "
                         f"shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    real, fake = real.detach(), fake.detach()
    alpha = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=generator,
                       device=real.device, dtype=real.dtype)
    x_hat = torch.lerp(fake, real, alpha).requires_grad_(True)
    out = _sum_outputs(D(x_hat, *d_args, **(d_kwargs or {})))
    (grad,) = torch.autograd.grad(out, x_hat, create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return weight * (norm - center).pow(2).mean()


def r1_penalty(d_out: Prediction, real: torch.Tensor, gamma: float = 10.0) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): gamma / 2 * E[||grad_x D(x)||^2] on real data.

    ``real`` [N, ...] must have requires_grad=True and ``d_out`` be D's output on it (computed
    with grad enabled). Differentiable (create_graph=True). Returns a scalar.
    """
    if not real.requires_grad:
        raise ValueError("fastgan.losses.r1_penalty: real must require grad "
                         "(real.requires_grad_(True) before calling D on it)")
    (grad,) = torch.autograd.grad(_sum_outputs(d_out), real, create_graph=True)
    return gamma / 2 * grad.pow(2).flatten(1).sum(1).mean()


def relativistic_average_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor,
                              for_discriminator: bool = True) -> torch.Tensor:
    """Relativistic average GAN loss (Jolicoeur-Martineau 2018) as ESRGAN trains with it.

    D: (BCE(C(real) - mean C(fake), 1) + BCE(C(fake) - mean C(real), 0)) / 2.
    G: the labels swapped, (BCE(C(real) - mean C(fake), 0) + BCE(C(fake) - mean C(real), 1)) / 2,
    with ``real_pred`` detached (ESRGAN's G step runs D on the ground truth without gradient).
    For D both terms keep their gradients, as the original ESRGAN training code; BasicSR's split
    real/fake D step (for memory) detaches the other side's mean, which gives the same value but
    drops the mean terms' share of the gradient. Predictions are logits of any shape; means are
    over all elements.
    """
    if not for_discriminator:
        real_pred = real_pred.detach()
    real_rel = real_pred - fake_pred.mean()
    fake_rel = fake_pred - real_pred.mean()
    real_target, fake_target = (1.0, 0.0) if for_discriminator else (0.0, 1.0)
    loss_real = F.binary_cross_entropy_with_logits(
        real_rel, real_rel.new_tensor(real_target).expand_as(real_rel))
    loss_fake = F.binary_cross_entropy_with_logits(
        fake_rel, fake_rel.new_tensor(fake_target).expand_as(fake_rel))
    return (loss_real + loss_fake) / 2


def feature_matching_loss(real_features: Sequence[Sequence[torch.Tensor]],
                          fake_features: Sequence[Sequence[torch.Tensor]], weight: float = 10.0,
                          layer_weight: float | None = None) -> torch.Tensor:
    """pix2pixHD's discriminator feature-matching loss (Wang et al. 2018, eq. 4).

    ``real_features`` / ``fake_features``: one list per D scale of that scale's outputs, the last
    being the prediction (excluded). Per scale, the L1 distances between the intermediate features
    (real detached) are summed with ``layer_weight`` each, the scales averaged, times ``weight``.
    ``layer_weight=None`` is pix2pixHD's 4 / (n_layers_D + 1), i.e. 4 / (number of intermediate
    features), so with 1 / num_D the total is pix2pixHD's ``loss_G_GAN_Feat`` (``weight`` is its
    lambda_feat = 10). SPADE's GAN_Feat_loss is ``layer_weight=1``.
    """
    if len(real_features) != len(fake_features) or not real_features:
        raise ValueError(f"fastgan.losses.feature_matching_loss: need the same non-zero number of "
                         f"scales, got {len(real_features)} real and {len(fake_features)} fake")
    total = 0.0
    for real_scale, fake_scale in zip(real_features, fake_features):
        if len(real_scale) != len(fake_scale) or len(real_scale) < 2:
            raise ValueError("fastgan.losses.feature_matching_loss: each scale needs the same "
                             "number (>= 2) of real and fake outputs: features, then prediction")
        n_feat = len(real_scale) - 1
        w = 4.0 / n_feat if layer_weight is None else layer_weight
        total = total + w * sum(F.l1_loss(f, r.detach())
                                for r, f in zip(real_scale[:-1], fake_scale[:-1]))
    return weight * total / len(real_features)
