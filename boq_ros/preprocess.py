"""Camera images (numpy, ROS encodings) -> normalised float tensors the BoQ model expects.

Two resize policies: 'height' keeps the aspect ratio and sets the height (the seed's choice:
384 for ResNet-50; 322 for DINOv2 with the width rounded to a multiple of 14), 'square' is the
authors' fixed square (384x384 / 322x322). Both resize the float image in [0, 1] bicubically with
antialiasing and no clamping, then apply the ImageNet normalisation. 8-bit images are divided by
255, 16-bit images by 65535 (the full uint16 range, whatever the sensor's real bit depth).
The same arithmetic runs on the CPU or, from the uint8/uint16 data, on the GPU.
"""
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from boq_ros.settings import RESIZE_POLICIES

Policy = Literal['height', 'square']
POLICIES = RESIZE_POLICIES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Canonical encoding -> (channels in the array, dtype, leading colour channels used, BGR order).
_ENCODINGS: dict[str, tuple[int, np.dtype, int, bool]] = {
    'rgb8': (3, np.dtype(np.uint8), 3, False),
    'bgr8': (3, np.dtype(np.uint8), 3, True),
    'rgba8': (4, np.dtype(np.uint8), 3, False),
    'bgra8': (4, np.dtype(np.uint8), 3, True),
    'mono8': (1, np.dtype(np.uint8), 1, False),
    'mono16': (1, np.dtype(np.uint16), 1, False),
}
_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16}
# OpenCV type names as ROS uses them; 3 and 4 channels are BGR(A) in OpenCV's convention.
_ALIASES = {'8UC1': 'mono8', '8UC3': 'bgr8', '8UC4': 'bgra8', '16UC1': 'mono16'}
ENCODINGS: tuple[str, ...] = (*_ENCODINGS, *_ALIASES)

MAX_ASPECT = 16
"""Widest output of the 'height' policy, in multiples of its height: a thin strip of a few
thousand pixels would otherwise become a gigabyte tensor (and the encoder's self-attention is
quadratic in the number of tokens)."""

# Default size of each policy per backbone: (size, multiple of the width and height).
_DEFAULTS = {'resnet50': {'height': (384, 1), 'square': (384, 1)},
             'dinov2': {'height': (322, 14), 'square': (322, 14)}}


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are resized; stored with a keyframe map so queries match its descriptors."""

    policy: Policy
    size: int
    multiple: int = 1

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f'unknown resize policy {self.policy!r}; expected one of {POLICIES}')
        for name in ('size', 'multiple'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        if self.size % self.multiple:
            raise ValueError(f'size {self.size} is not a multiple of {self.multiple}')

    @classmethod
    def default_for(cls, preset: str, policy: str = 'height') -> 'PreprocessConfig':
        """Pick the documented default of a preset (or backbone name) for `policy`."""
        backbone = preset.split('-')[0]
        if backbone not in _DEFAULTS:
            raise ValueError(f'no preprocessing defaults for {preset!r}; '
                             f'expected a preset or backbone starting with {tuple(_DEFAULTS)}')
        if policy not in POLICIES:
            raise ValueError(f'unknown resize policy {policy!r}; expected one of {POLICIES}')
        size, multiple = _DEFAULTS[backbone][policy]
        return cls(policy, size, multiple)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Return the (height, width) an input of this size is resized to."""
        if height < 1 or width < 1:
            raise ValueError(f'image size must be positive, got {height}x{width}')
        if self.policy == 'square':
            return self.size, self.size
        units = int(width * self.size / height / self.multiple + 0.5)
        out_width = max(1, units) * self.multiple
        if out_width > MAX_ASPECT * self.size:
            raise ValueError(
                f'image of {width}x{height} is too wide for the height policy: it would be '
                f'resized to {out_width}x{self.size}, more than {MAX_ASPECT} times its height')
        return self.size, out_width

    def resized(self, size: int) -> 'PreprocessConfig':
        """Return this policy at another size (0 keeps it), rounded to the allowed multiple."""
        if not size:
            return self
        return PreprocessConfig(self.policy, max(1, round(size / self.multiple)) * self.multiple,
                                self.multiple)

    def to_dict(self) -> dict:
        """Plain values for the keyframe map schema."""
        return {'policy': self.policy, 'size': self.size, 'multiple': self.multiple}

    @classmethod
    def from_dict(cls, data: dict) -> 'PreprocessConfig':
        """Inverse of to_dict; refuses missing or unknown fields."""
        fields = {'policy', 'size', 'multiple'}
        if not isinstance(data, dict) or set(data) != fields:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f'preprocess config needs exactly the fields {sorted(fields)}, '
                             f'got {got}')
        return cls(data['policy'], data['size'], data['multiple'])


def canonical_encoding(encoding: str) -> str:
    """Map an alias such as '8UC3' to its canonical name; unknown encodings are refused."""
    name = _ALIASES.get(encoding, encoding) if isinstance(encoding, str) else None
    if name not in _ENCODINGS:
        raise ValueError(f'unsupported image encoding {encoding!r}; expected one of {ENCODINGS}')
    return name


def check_image(image: np.ndarray, encoding: str) -> str:
    """Validate an array against its encoding before any work; return the canonical name."""
    name = canonical_encoding(encoding)
    channels, dtype, _, _ = _ENCODINGS[name]
    if not isinstance(image, np.ndarray):
        raise ValueError(f'image must be a numpy array, got {type(image).__name__}')
    shape = image.shape
    ok_shape = (len(shape) == 3 and shape[2] == channels) or (channels == 1 and len(shape) == 2)
    if not ok_shape:
        want = 'HxW or HxWx1' if channels == 1 else f'HxWx{channels}'
        raise ValueError(f'{name} image must be {want}, got shape {shape}')
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f'image is empty: shape {shape}')
    if image.dtype.kind != dtype.kind or image.dtype.itemsize != dtype.itemsize:
        raise ValueError(f'{name} image must have dtype {dtype}, got {image.dtype}')
    return name


@cache
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return mean and std as [1, 3, 1, 1] tensors on `device`, made once.

    Building them per batch would be a blocking host-to-device copy, which waits for the
    previous batch's forward on the GPU.
    """
    with torch.inference_mode(False):
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return mean, std


def _to_device(images: Sequence[np.ndarray], dtype: np.dtype, device: torch.device
               ) -> torch.Tensor:
    """Stack same-shape arrays and move them, still integer, to `device` (pinned on CUDA)."""
    arrays = [np.asarray(im, dtype=dtype) for im in images]
    if device.type != 'cuda':
        return torch.from_numpy(np.stack(arrays)).to(device)
    # Stack straight into page-locked memory: one copy, then an asynchronous upload.
    pinned = torch.empty((len(arrays), *arrays[0].shape), dtype=_TORCH_DTYPES[dtype],
                         pin_memory=True)
    np.stack(arrays, out=pinned.numpy())
    return pinned.to(device, non_blocking=True)


def preprocess_batch(images: Sequence[np.ndarray], encodings: str | Sequence[str],
                     config: PreprocessConfig, device: str | torch.device = 'cpu'
                     ) -> torch.Tensor:
    """Turn images that share an output size into one normalised batch [B, 3, H, W] on `device`.

    Images with the same shape and encoding are converted together; the resize and the
    normalisation run on `device` from the integer data.
    """
    device = torch.device(device)
    if isinstance(encodings, str):
        encodings = [encodings] * len(images)
    if len(encodings) != len(images):
        raise ValueError(f'{len(images)} images but {len(encodings)} encodings')
    if not images:
        raise ValueError('no images to preprocess')
    names = [check_image(im, enc) for im, enc in zip(images, encodings)]
    sizes = {config.output_size(*im.shape[:2]) for im in images}
    if len(sizes) != 1:
        raise ValueError(f'images of one batch must share an output size, got {sorted(sizes)}')
    out_h, out_w = sizes.pop()
    mean, std = _imagenet_stats(device)
    parts = []
    start = 0
    while start < len(images):  # runs of equal shape and encoding convert as one tensor
        key = (images[start].shape, names[start])
        stop = start + 1
        while stop < len(images) and (images[stop].shape, names[stop]) == key:
            stop += 1
        _, dtype, colours, bgr = _ENCODINGS[key[1]]
        raw = _to_device(images[start:stop], dtype, device)
        if raw.dim() == 3:
            raw = raw.unsqueeze(-1)
        # Slice and convert first: CUDA has no integer indexing kernels for uint16.
        x = raw[..., :colours].permute(0, 3, 1, 2).float() / float(np.iinfo(dtype).max)
        if bgr:
            x = x.flip(1)
        if x.shape[-2:] != (out_h, out_w):
            x = F.interpolate(x, size=(out_h, out_w), mode='bicubic', align_corners=False,
                              antialias=True)
        parts.append(x.expand(-1, 3, -1, -1))
        start = stop
    batch = parts[0] if len(parts) == 1 else torch.cat(parts)
    return ((batch - mean) / std).contiguous()


def preprocess(image: np.ndarray, encoding: str, config: PreprocessConfig) -> torch.Tensor:
    """Turn one camera image into the normalised [3, H, W] float32 tensor the model expects."""
    return preprocess_batch([image], [encoding], config)[0]
