"""Quality metrics of the reference benchmark (docs/reference-benchmark.md, Q3).

* FD: Frechet distance between Gaussian fits of the classifier's 128-d penultimate features of
  generated and real images, `||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))`.
* confidence: mean max-softmax of the classifier on generated images.
* class_entropy: entropy (nats) of the predicted-class histogram (log 10 = 2.303 is uniform;
  mode collapse lowers it).
* paired fidelity vs the FP model sampled from the same noise with a deterministic sampler:
  PSNR of the images (data range 2 for [-1, 1]) and the fraction of unchanged predicted classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg

from edgediff.reference.classifier import TinyCNN


@torch.no_grad()
def classify(model: TinyCNN, images: torch.Tensor, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Return `(features [N,128], probabilities [N,10])` as float64 numpy arrays."""
    feats, probs = [], []
    for chunk in images.split(batch_size):
        f = model.features(chunk.float())
        feats.append(f.double().numpy())
        probs.append(torch.softmax(model.head(f), dim=1).double().numpy())
    return np.concatenate(feats), np.concatenate(probs)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of two feature sets."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a, cov_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(cov_a.shape[0])
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * covmean))


def class_entropy(probs: np.ndarray) -> float:
    hist = np.bincount(probs.argmax(1), minlength=probs.shape[1]).astype(np.float64)
    p = hist / hist.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """PSNR over the whole set (mean squared error of all pixels)."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


@dataclass(frozen=True)
class QualityReport:
    fd: float
    confidence: float
    class_entropy: float
    samples: int
    paired_psnr: float | None = None
    label_agree: float | None = None

    def to_dict(self) -> dict:
        out = {
            "fd": self.fd,
            "confidence": self.confidence,
            "class_entropy": self.class_entropy,
            "samples": self.samples,
        }
        if self.paired_psnr is not None:
            out["paired_psnr"] = self.paired_psnr
            out["label_agree"] = self.label_agree
        return out


def evaluate_samples(
    classifier: TinyCNN,
    samples: torch.Tensor,
    real_features: np.ndarray,
    reference_samples: torch.Tensor | None = None,
) -> QualityReport:
    """Score generated `samples`; with `reference_samples` (FP, same noise) add paired fidelity."""
    feats, probs = classify(classifier, samples)
    paired, agree = None, None
    if reference_samples is not None:
        if reference_samples.shape != samples.shape:
            raise ValueError("paired samples must have the same shape")
        _, ref_probs = classify(classifier, reference_samples)
        paired = psnr(samples, reference_samples)
        agree = float((probs.argmax(1) == ref_probs.argmax(1)).mean())
    return QualityReport(
        fd=frechet_distance(feats, real_features),
        confidence=float(probs.max(1).mean()),
        class_entropy=class_entropy(probs),
        samples=int(samples.shape[0]),
        paired_psnr=paired,
        label_agree=agree,
    )
