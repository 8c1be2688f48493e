"""The one preprocessing: a model's input from images, as its weights expect it, and the one forward pass.

:class:`Preprocessing` is what a zoo entry records (``ModelSpec.preprocessing()``, part of every
extraction cache key): resize directly to ``input_size`` with ``interpolation`` (no crop: small target
images keep all their content), RGB, then ``(x - mean) / std`` per channel on the [0, 1] scale. It
makes model inputs from both kinds of images the pipeline sees:

- image files, decoded to ``PIL.Image`` (a ranking's datasets): :meth:`Preprocessing.transform`, timm's
  eval transform (PIL's antialiased resampling on the 8-bit image);
- in-memory gray arrays (the benchmark build's targets, pre-training and fine-tuning):
  :meth:`Preprocessing.arrays` (torch's antialiased resampling on the [0, 1] float image).

The two resamplers use the same kernels but round differently (PIL rounds and clips to 8 bits between its
two passes: bilinear differs by one 8-bit step at most, bicubic by 0.0012 on average and up to 0.12 in
normalised units at sharp edges, measured on Animal-MNIST); each path is kept as it was, because changing either would change stored logits files or a
committed suite's features (docs/architecture.md, "One extraction path").

:func:`forward` is the one forward pass (timm's API: one ``forward_features`` call, then ``forward_head``
with ``pre_logits=True`` for the features and without for the logits) used by the ranking's extraction
(:func:`lead.extract.extract`), the benchmark build (:func:`lead.benchbuild.features_and_logits`) and the
backbone kernel (:mod:`lead.kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Interpolations a zoo entry may name (timm's names; PIL and torch both have them).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """A model's preprocessing. ``input_size`` is (H, W) in pixels; ``mean``/``std`` are per RGB channel on
    the [0, 1] pixel scale; ``interpolation`` is one of :data:`INTERPOLATIONS`; ``resize`` is ``"direct"``
    (the whole image squashed to ``input_size``, no crop)."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    resize: str = "direct"

    @classmethod
    def of(cls, spec) -> Preprocessing:
        """The preprocessing of a zoo entry (:class:`lead.zoo.ModelSpec`)."""
        return cls(tuple(spec.input_size), tuple(spec.mean), tuple(spec.std), spec.interpolation)

    def to_dict(self) -> dict:
        """JSON-able, keys in this order (the logits files' ``lead.preprocessing`` and the cache keys)."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize": self.resize,
        }

    def transform(self):
        """The transform of one decoded image file: ``PIL.Image`` (RGB) -> float32 tensor (3, H, W).
        timm's eval transform factory with ``crop_pct=1.0, crop_mode="squash"`` (resize, to tensor,
        normalise)."""
        from timm.data import create_transform

        return create_transform(
            input_size=(3, *self.input_size),
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            crop_pct=1.0,
            crop_mode="squash",
            is_training=False,
        )

    def arrays(self, images: np.ndarray):
        """Model input from gray images held in memory.

        Args:
            images: (n, h, w) uint8.
        Returns:
            float32 tensor (n, 3, H, W): scaled to [0, 1], resized to ``input_size`` (antialiased for
            bilinear and bicubic) and clamped to [0, 1] when the size differs, gray copied to RGB, then
            ``(x - mean) / std`` per channel.
        """
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
        if tuple(x.shape[-2:]) != tuple(self.input_size):
            kwargs = {"antialias": True} if self.interpolation in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, size=tuple(self.input_size), mode=self.interpolation, **kwargs).clamp_(0.0, 1.0)
        x = x.expand(-1, 3, -1, -1)
        m = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - m) / s).contiguous()


def has_head(model) -> bool:
    """Whether the model has a source classifier (timm's ``num_classes`` is 0 for a headless model)."""
    return getattr(model, "num_classes", 1) != 0


def forward(model, x, *, logits: bool = True):
    """Pre-logit features and source-head logits of one batch (timm's feature API).

    The caller chooses the context: ``torch.inference_mode`` and autocast for extraction, gradients on
    for the backbone kernel.

    Args:
        model: a timm model, or one offering ``forward_features`` and ``forward_head(x, pre_logits)``.
        x: input tensor (B, 3, H, W), preprocessed for the model (:class:`Preprocessing`).
        logits: also compute the logits (skipped, and None, for a headless model).
    Returns:
        (features (B, D), logits (B, Cs) or None), tensors in the model's dtype and on its device.
    """
    pooled = model.forward_features(x)
    features = model.forward_head(pooled, pre_logits=True)
    return features, (model.forward_head(pooled) if logits and has_head(model) else None)
