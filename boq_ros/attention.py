"""Where each learned query looks: cross-attention heat maps over the input image.

The seed (section 8) shows that individual queries specialise (vegetation, buildings, poles) and
stay consistent across conditions; these maps make that visible for any image and checkpoint.
"""
from collections.abc import Sequence
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from boq_ros.extractor import Extractor
from boq_ros.preprocess import canonical_encoding, check_image


def _check_selection(extractor: Extractor, queries: Sequence[int], block: int) -> list[int]:
    blocks, num_queries = extractor.model.config.num_blocks, extractor.model.config.num_queries
    if not 0 <= block < blocks:
        raise ValueError(f'block {block} out of range: the model has {blocks} BoQ blocks')
    queries = [int(q) for q in queries]
    if not queries:
        raise ValueError('no queries selected')
    bad = [q for q in queries if not 0 <= q < num_queries]
    if bad:
        raise ValueError(f'queries {bad} out of range: the model has {num_queries} per block')
    return queries


def attention_heatmaps(extractor: Extractor, image: np.ndarray, encoding: str,
                       queries: Sequence[int], block: int = 0) -> np.ndarray:
    """Return the chosen queries' attention [len(queries), H, W], upsampled to the image size."""
    selected = _check_selection(extractor, queries, block)
    _, maps = extractor.extract_with_attention([image], encoding)
    grid = torch.from_numpy(maps[0][block, selected]).unsqueeze(0)  # [1, n, h', w']
    up = F.interpolate(grid, size=image.shape[:2], mode='bilinear', align_corners=False)
    return up[0].numpy()


def display_rgb(image: np.ndarray, encoding: str) -> np.ndarray:
    """Return a uint8 RGB copy for display (16-bit images are stretched to their maximum)."""
    name = check_image(image, encoding)
    if name == 'mono16':
        peak = max(int(image.max()), 1)
        image = (image.astype(np.float32) * (255.0 / peak)).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    rgb = image[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1] if name.startswith('bgr') else rgb)


def render_attention(images: Sequence[np.ndarray], extractor: Extractor, queries: Sequence[int],
                     out_path: str | os.PathLike, *, encodings: str | Sequence[str] = 'rgb8',
                     block: int = 0, labels: Sequence[str] | None = None,
                     alpha: float = 0.5) -> Path:
    """Write a grid: one row per image, the image then each query's map over it (PNG etc.)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not images:
        raise ValueError('no images to render')
    if isinstance(encodings, str):
        encodings = [encodings] * len(images)
    if len(encodings) != len(images):
        raise ValueError(f'{len(images)} images but {len(encodings)} encodings')
    if labels is not None and len(labels) != len(images):
        raise ValueError(f'{len(images)} images but {len(labels)} labels')
    encodings = [canonical_encoding(e) for e in encodings]
    _check_selection(extractor, queries, block)
    heatmaps = [attention_heatmaps(extractor, im, enc, queries, block)
                for im, enc in zip(images, encodings)]
    cols = 1 + len(heatmaps[0])
    fig = Figure(figsize=(2.6 * cols, 2.2 * len(images)), layout='constrained')
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), cols, squeeze=False)
    for row, (image, enc, maps) in enumerate(zip(images, encodings, heatmaps)):
        rgb = display_rgb(image, enc)
        axes[row, 0].imshow(rgb)
        axes[row, 0].set_title(labels[row] if labels else f'image {row}', fontsize=8)
        for col, (query, heat) in enumerate(zip(queries, maps), start=1):
            axes[row, col].imshow(rgb)
            span = max(float(heat.max() - heat.min()), 1e-12)  # each map on its own scale
            axes[row, col].imshow((heat - heat.min()) / span, cmap='jet', alpha=alpha,
                                  vmin=0.0, vmax=1.0)
            axes[row, col].set_title(f'query {query} (block {block})', fontsize=8)
    for ax in axes.flat:
        ax.axis('off')
    fig.suptitle(f'BoQ attention, {extractor.model_id}', fontsize=9)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
