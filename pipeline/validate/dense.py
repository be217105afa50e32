"""Dense prediction (segmentation) in ``validate``: pixels become rows.

A dense classifier's graph returns ``mean_probs [N, C, *spatial]`` and entropy / MI maps
``[N, *spatial]`` (:mod:`qbnn.exporters.modules.heads`); its labels are ``y [N, *spatial]``. Every
classification metric of :mod:`qbnn.pipeline.validate.evaluation` is defined over rows, so the
pixels are flattened to rows (``N * prod(spatial)`` of them, image-major) and the same code
measures pixel accuracy, NLL, Brier, ECE, referral and OOD AUROC. Bootstrap intervals then
resample pixels as if independent, which understates the data noise of correlated pixels.

The first :data:`MAP_IMAGES` images keep their maps (predicted class, predictive entropy,
mutual information) for the ``uncertainty_maps.png`` plot.
"""

from __future__ import annotations

import numpy as np

from qbnn.runtimes.errors import RuntimeInputError

__all__ = ["MAP_IMAGES", "flatten_pixels", "is_dense", "pixel_labels", "uncertainty_maps"]

#: images whose uncertainty maps are kept for the report's PNG
MAP_IMAGES = 4


def is_dense(mean_probs: np.ndarray | None) -> bool:
    """``mean_probs`` has spatial axes (``[N, C, *spatial]``)."""
    return mean_probs is not None and mean_probs.ndim > 2


def flatten_pixels(mean_probs: np.ndarray, *per_position: np.ndarray | None):
    """``mean_probs [N, C, *sp] -> [N * prod(sp), C]`` and each ``[N, *sp] -> [N * prod(sp)]``
    (None stays None)."""
    c = mean_probs.shape[1]
    rows = np.moveaxis(mean_probs, 1, -1).reshape(-1, c)
    return (rows, *(None if a is None else a.reshape(-1) for a in per_position))


def pixel_labels(y: np.ndarray, spatial: tuple[int, ...], source: str) -> np.ndarray:
    """Labels ``y [N, *spatial]`` as pixel rows ``[N * prod(spatial)]``; a wrong shape raises
    :class:`RuntimeInputError` naming both shapes."""
    y = np.asarray(y)
    if tuple(y.shape[1:]) != tuple(spatial):
        raise RuntimeInputError(
            f"{source}: the models predict per pixel (spatial shape {list(spatial)}), so labels "
            f"'y' must be class maps [N, {', '.join(map(str, spatial))}]; got {list(y.shape)}"
        )
    return y.reshape(-1)


def uncertainty_maps(
    mean_probs: np.ndarray, entropy: np.ndarray, mi: np.ndarray
) -> dict[str, list]:
    """Maps of the first :data:`MAP_IMAGES` images for 2-D outputs (``[N, C, H, W]``):
    ``{"prediction", "entropy", "mutual_information"}``, each ``[n, H, W]`` as nested lists;
    empty for other ranks."""
    if mean_probs.ndim != 4:
        return {}
    n = min(MAP_IMAGES, len(mean_probs))
    return {
        "prediction": mean_probs[:n].argmax(1).tolist(),
        "entropy": np.asarray(entropy[:n], dtype=np.float64).tolist(),
        "mutual_information": np.asarray(mi[:n], dtype=np.float64).tolist(),
    }
