"""How familiar a support set looks to a base: the `auto` mode's choice of inner loop.

A base's fast loop is best on inputs like its training data; its fine-tune loop is best on
anything else (docs/experiments.md). Which one a support set is, is read from the base itself:
what its first two blocks make of each image (`Conv4.low_level`: each channel's mean and spread,
stroke width, edges and texture before anything specific to a class), against the same numbers
over the base's training images, which the base carries in its JSON's `auto` (written at
training time, `record`):

- an image's distance: the log of its mean squared z-score over those numbers;
- a support set's: the median over its images;
- fine-tune when that exceeds the 90th percentile of the training images' distances, else fast.
  The smallest support set, two images, passes it when both images do: 1% of training pairs.
  Larger sets of training-like images pass it less often, even when, like the characters of one
  alphabet, they are alike among themselves.

Nothing in it is particular to one domain: any images whose early features the base sees
differently from its training images' get the fine-tune loop, whatever their kind.

A base trained on many kinds of images (symbols-conv4) finds most inputs familiar, yet its
fine-tune loop still pays once each class has a few examples. Its `auto` then also carries
`fine_tune_from_shots`, chosen on its validation families (`models.train auto --fine-tune-from-shots`):
a support set whose every class has at least that many examples is fine-tuned, familiar or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PERCENTILE = 90
CHUNK = 64  # images per pass of the trunk
RULE = (
    "fine-tune when the median over the support images of log(mean squared z-score of the base's low_level "
    f"features) exceeds the {PERCENTILE}th percentile of the training images', else fast"
)


@dataclass
class Familiar:
    """A base's training images as `auto` sees them: the low-level features' mean and spread,
    and the distance beyond which a support set is unfamiliar."""

    mean: torch.Tensor
    std: torch.Tensor
    threshold: float
    from_shots: int | None = None  # fine-tune any support set with at least this many shots per class

    @classmethod
    def from_record(cls, record: dict | None) -> Familiar | None:
        """From a base JSON's `auto`; None for a base without one (its `auto` is the fast loop)."""
        if not record or "feature_mean" not in record:
            return None
        t = lambda k: torch.tensor(record[k], dtype=torch.float32)
        return cls(t("feature_mean"), t("feature_std"), record["threshold"], record.get("fine_tune_from_shots"))

    def distances(self, model, x: torch.Tensor) -> torch.Tensor:
        """[B]: each image's log mean squared z-score."""
        return self.of_features(features(model, x))

    def of_features(self, feats: torch.Tensor) -> torch.Tensor:
        return ((feats - self.mean) / self.std).square().mean(1).log()

    def fine_tune(self, feats: torch.Tensor, y: torch.Tensor) -> bool:
        """The `auto` choice for a support set, from its labels y and its images' `low_level`
        features: enough shots per class, or images beyond the base's training images."""
        if self.from_shots is not None and torch.unique(y, return_counts=True)[1].min().item() >= self.from_shots:
            return True
        return self.of_features(feats).median().item() > self.threshold


def features(model, x: torch.Tensor) -> torch.Tensor:
    """`model.low_level` of images x -> [B, F] on the CPU."""
    return in_passes(model, model.low_level, x).float().cpu()


def look(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`model.look` of images x -> (low-level features [B, F] on the CPU, trunk features [B, ...] on
    the model's device)."""
    feats, trunk = in_passes(model, model.look, x)
    return feats.float().cpu(), trunk


def in_passes(model, fn, x: torch.Tensor):
    """fn of images x on the model's device, without a graph, in passes of at most CHUNK images (a
    500-image support set of 64-pixel colour images would hold 0.5 GB of maps in one), joined."""
    dev = next(model.parameters()).device
    with torch.no_grad():
        parts = [fn(x[i : i + CHUNK].to(dev)) for i in range(0, len(x), CHUNK)]
    return torch.cat(parts) if torch.is_tensor(parts[0]) else tuple(map(torch.cat, zip(*parts)))


def record(model, images: torch.Tensor, source: str) -> dict:
    """A base JSON's `auto`: what `Familiar` needs, from the images the base was trained on."""
    feats = features(model, images)
    out = {"rule": RULE, "from": f"{len(images)} training images ({source})", "threshold": 0.0}
    out["feature_mean"] = [round(v, 6) for v in feats.mean(0).tolist()]
    out["feature_std"] = [round(v, 6) for v in feats.std(0).clamp(min=1e-6).tolist()]
    d = Familiar.from_record(out).of_features(feats)
    out["threshold"] = round(torch.quantile(d, PERCENTILE / 100).item(), 5)
    return out
