"""Released BoQ checkpoints: strict validation and loading, the torch hub cache, test weights.

Third-party wrappers have silently loaded only part of these files; here every key, shape and
dtype is checked against the lists in ``data/`` and any difference is refused with a message that
names it.

Whether weights are the authors' release is a recorded fact, not a guess from a file name:
:func:`download_checkpoint` writes the sha256 of what it fetched from the official URL into
``RELEASE_RECORD`` next to the file, and :func:`is_released` checks a file or model against it.
"""
from collections.abc import Mapping
from functools import cache
import importlib.resources
import json
import os
from pathlib import Path
import pickle

import torch
from torch import nn

from boq_ros.checksum import file_sha256
from boq_ros.model.boq import BoQModel
from boq_ros.model.presets import BACKBONES, DEFAULT_PRESET, PRESETS, BoQConfig, get_preset

_PREFIXES = {'resnet50': 'backbone.net.', 'dinov2': 'backbone.dino.'}
_LISTED = 5  # key names quoted in an error message
RELEASE_RECORD = 'boq_ros_released.json'  # in the checkpoint cache: file name -> sha256, url


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as given; the message names the problem."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint file where one was asked for (also an OSError, as missing files are)."""


@cache
def expected_tensors(preset: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype name) of every tensor in the released file of `preset`."""
    config = get_preset(preset)
    text = (importlib.resources.files('boq_ros.model') / 'data' / config.keys_file).read_text()
    tensors = {}
    for line in text.splitlines():
        if line and not line.startswith('#'):
            key, shape, dtype = line.split('\t')
            dims = shape.strip('()').replace(' ', '')
            tensors[key] = (tuple(int(d) for d in dims.split(',') if d), dtype)
    return tensors


def cache_path(preset: str) -> Path:
    """Where torch.hub keeps the released file of `preset` (the authors' hub uses it too)."""
    return Path(torch.hub.get_dir()) / 'checkpoints' / get_preset(preset).weights_file


def _quote(keys: list[str]) -> str:
    more = ', ...' if len(keys) > _LISTED else ''
    return ', '.join(keys[:_LISTED]) + more


def detect_backbone(state: Mapping[str, object]) -> str:
    """Which backbone a state dict belongs to, from its key prefixes."""
    found = [b for b in BACKBONES if any(str(k).startswith(_PREFIXES[b]) for k in state)]
    if len(found) != 1:
        sample = _quote([str(k) for k in list(state)[:_LISTED + 1]])
        what = 'both' if found else 'neither'
        raise CheckpointError(
            f'cannot tell the backbone: the checkpoint has {what} backbone.net.* (resnet50) '
            f'{"and" if found else "nor"} backbone.dino.* (dinov2) keys; first keys: {sample}')
    return found[0]


def check_flat(state: object) -> None:
    """Refuse anything but a flat dict of str -> tensor (not a wrapper dict, not a module)."""
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f'not a state dict: the file holds a {type(state).__name__}, expected the flat '
            'dict of tensors the authors released')
    wrapped = [k for k in ('state_dict', 'model', 'model_state_dict')
               if isinstance(state.get(k), Mapping)]
    if wrapped:
        raise CheckpointError(
            f'checkpoint is a wrapper dict (keys: {_quote([str(k) for k in state])}); expected '
            f'the flat state dict as released, e.g. the value of {wrapped[0]!r}')
    bad = [f'{k} ({type(v).__name__})' for k, v in state.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'not a flat state dict: {len(bad)} non-tensor entries: '
                              f'{_quote(bad)}')


def validate_state_dict(state: Mapping[str, torch.Tensor], config: BoQConfig) -> None:
    """Refuse anything but exactly the released keys, shapes and dtypes of `config`."""
    check_flat(state)
    backbone = detect_backbone(state)
    if backbone != config.backbone:
        raise CheckpointError(f'checkpoint is for {backbone}, not {config.backbone}')
    expected = expected_tensors(config.name)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing keys: {_quote(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected keys: {_quote(unexpected)}')
    for key, (shape, dtype) in expected.items():
        if key in state:
            tensor = state[key]
            if tuple(tensor.shape) != shape:
                problems.append(f'{key} has shape {tuple(tensor.shape)}, expected {shape}')
            elif str(tensor.dtype).removeprefix('torch.') != dtype:
                problems.append(f'{key} has dtype {tensor.dtype}, expected {dtype}')
    if problems:
        raise CheckpointError(f'checkpoint does not match preset {config.name}: '
                              + '; '.join(problems[:_LISTED + 1]))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file safely (weights_only) and check it is a flat dict of tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f'checkpoint file not found: {path}')
    if path.stat().st_size == 0:
        raise CheckpointError(f'checkpoint file is empty: {path}')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f'{path} is not a plain state dict: safe (weights_only) loading refuses it '
            f'({_unpickler_detail(e)}); it holds Python objects other than tensors, or it is '
            'corrupt') from e
    except OSError:  # unreadable (permissions, I/O): not the file's content
        raise
    except Exception as e:  # noqa: BLE001 - torch.load of a damaged file raises anything
        # (RuntimeError, EOFError, KeyError, IndexError, struct.error, AssertionError, ...)
        detail = ': '.join([type(e).__name__, *str(e).splitlines()[:1]])
        raise CheckpointError(
            f'cannot read {path}: truncated or corrupt file ({detail})') from e
    check_flat(state)
    return dict(state)


def _unpickler_detail(error: Exception) -> str:
    """Return the informative line of torch's weights_only refusal (the rest is boilerplate)."""
    text = str(error)
    _, found, rest = text.partition('WeightsUnpickler error:')
    lines = (rest if found else text).strip().splitlines() or ['']
    return lines[0].partition('. Please')[0]


def resolve_checkpoint(spec: str | os.PathLike, download: bool = False) -> Path:
    """Turn a path or a preset name into an existing checkpoint file."""
    text = os.fspath(spec)
    if text in PRESETS:
        path = cache_path(text)
        if path.is_file():
            return path
        if download:
            return download_checkpoint(text)
        raise CheckpointNotFoundError(
            f'the {text} weights are not in the torch hub cache ({path}); run '
            f'`boq-ros weights download --preset {text}` or pass the path of a checkpoint file')
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise CheckpointNotFoundError(
        f'no checkpoint file {text!r} (and it is not a preset name: {", ".join(PRESETS)})')


def download_checkpoint(preset: str, progress: bool = True) -> Path:
    """Fetch the released file into the torch hub cache, validate it, record its sha256."""
    config = get_preset(preset)
    path = cache_path(preset)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(config.url, os.fspath(path), progress=progress)
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        raise CheckpointError(
            f'could not download {config.url} ({e}); without network access, copy '
            f'{config.weights_file} to {path} or pass the path of a checkpoint file') from e
    try:
        validate_state_dict(read_state_dict(path), config)
    except CheckpointError:
        path.unlink(missing_ok=True)
        raise
    _record_release(path, config)
    return path


def release_record_path() -> Path:
    """Where the sha256 of every file fetched from an official URL is recorded."""
    return Path(torch.hub.get_dir()) / 'checkpoints' / RELEASE_RECORD


def _read_release_record() -> dict[str, dict[str, str]]:
    """Return the record, or {} when there is none or it cannot be trusted (never raises)."""
    try:
        record = json.loads(release_record_path().read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {k: v for k, v in record.items()
            if isinstance(v, dict) and isinstance(v.get('sha256'), str)}


def _record_release(path: Path, config: BoQConfig) -> None:
    """Add the downloaded file's sha256 to the record (replaced atomically, never half-written)."""
    record = _read_release_record()
    record[config.weights_file] = {'sha256': file_sha256(path), 'url': config.url}
    target = release_record_path()
    temporary = target.with_name(f'.{target.name}.{os.getpid()}.tmp')
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + '\n', encoding='utf-8')
    os.replace(temporary, target)


def released_checksums() -> set[str]:
    """Return the sha256 of every file recorded as downloaded from its preset's official URL."""
    official = {config.weights_file: config.url for config in PRESETS.values()}
    return {entry['sha256'] for name, entry in _read_release_record().items()
            if name in official and entry.get('url') == official[name]}


def is_released(weights: str | os.PathLike | BoQModel) -> bool:
    """Tell whether a checkpoint file (or a loaded model's file) is a downloaded release.

    True only when the file's sha256 (for a model, ``model.checksum``) was recorded by
    :func:`download_checkpoint`; a copy placed by hand, a random checkpoint or a modified file
    is not. A preset name means its file in the torch hub cache.
    """
    if isinstance(weights, BoQModel):
        checksum = weights.checksum
    else:
        text = os.fspath(weights)
        path = cache_path(text) if text in PRESETS else Path(text).expanduser()
        if not path.is_file():
            return False
        checksum = file_sha256(path)
    return bool(checksum) and checksum in released_checksums()


def _randomise_(model: nn.Module, generator: torch.Generator) -> None:
    """Give every tensor non-trivial values so that a swapped or skipped tensor shows."""
    def uniform_(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)

    def normal_(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=generator) * std)

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            normal_(module.running_mean, 0.1)
            uniform_(module.running_var, 0.5, 2.0)
            uniform_(module.weight, 0.5, 1.5)
            normal_(module.bias, 0.1)
        elif isinstance(module, nn.LayerNorm):
            uniform_(module.weight, 0.5, 1.5)
            normal_(module.bias, 0.1)
    for name, param in model.named_parameters():
        if name.endswith(('in_proj_bias', 'out_proj.bias')):
            normal_(param, 0.02)
        elif name.endswith('.gamma'):
            uniform_(param, 0.1, 1.0)
        elif name.endswith(('cls_token', 'pos_embed', 'mask_token')):
            normal_(param, 0.02)


def write_random_checkpoint(path: str | os.PathLike, preset: str, seed: int = 0) -> Path:
    """Write random weights in exactly the released format (for tests; never downloads).

    No release record is written, so :func:`is_released` is False for the file even in the
    torch hub cache under the released name.
    """
    config = get_preset(preset)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BoQModel(config)
    with torch.no_grad():
        _randomise_(model, generator)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    validate_state_dict(state, config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def default_preset(backbone: str) -> str:
    """Name the released preset of a backbone; unknown names get the valid ones in the error."""
    if backbone not in DEFAULT_PRESET:
        raise ValueError(f'unknown backbone {backbone!r}; expected one of {BACKBONES}')
    return DEFAULT_PRESET[backbone]


def load_boq(checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
             backbone: str | None = None, *, preset: str | None = None) -> BoQModel:
    """Build the model a checkpoint was released for and load it strictly, in eval mode.

    `checkpoint` is a file path, a preset name whose file is in the torch hub cache, or an
    in-memory state dict. The preset follows from `preset`, else `backbone`, else the keys.
    """
    if isinstance(checkpoint, Mapping):
        check_flat(checkpoint)  # before detect_backbone, whose message would mislead
        state, checksum = dict(checkpoint), ''
    else:
        path = resolve_checkpoint(checkpoint)
        state, checksum = read_state_dict(path), file_sha256(path)
    if preset is None:
        preset = default_preset(backbone or detect_backbone(state))
    config = get_preset(preset)
    if backbone is not None and backbone != config.backbone:
        raise ValueError(f'preset {preset} uses backbone {config.backbone}, not {backbone}')
    validate_state_dict(state, config)
    with torch.device('meta'):
        model = BoQModel(config, checksum)
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    return model
