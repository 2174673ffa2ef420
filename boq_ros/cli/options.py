"""Command-line flags generated from the settings vocabulary (``boq_ros/settings.py``).

``add(group, ModelSettings, 'checkpoint', 'device')`` adds ``--checkpoint`` and ``--device`` with
the setting's type, choices, range, default and description, so a flag can never drift from the
node parameter of the same name; a boolean is ``--name`` / ``--no-name``, a list takes its
values after one flag. Old flag names keep working as hidden aliases that print a
deprecation note (``ALIASES``). Imports nothing heavy: ``boq-ros --help`` stays fast.
"""
import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
import sys
from typing import Any

from boq_ros.settings import KIND_NAMES, Setting, SettingError, from_values, settings_of

ALIASES: dict[str, str] = {
    '--backbone': '--preset', '--resize': '--resize-policy', '--policy': '--resize-policy',
    '--size': '--input-size', '--height': '--input-size', '--heights': '--input-size',
    '--image-size': '--input-size', '--keyframes': '--keyframe-mode',
    '--interval-s': '--keyframe-interval-s', '--keyframe-interval': '--keyframe-interval-s',
    '--distance-m': '--keyframe-distance-m', '--keyframe-distance': '--keyframe-distance-m',
    '--angle-rad': '--keyframe-angle-rad', '--keyframe-angle': '--keyframe-angle-rad',
    '--index': '--index-kind', '--radius': '--radius-m', '--topic': '--image-topic',
    '--gt-topic': '--pose-topic', '--gt-child-frame': '--pose-child-frame',
    '--gt-file': '--pose-file', '--query-gt-file': '--query-pose-file',
    '--gt-format': '--pose-format', '--gt-times': '--pose-times',
}
"""Deprecated flag -> its name now (one name per concept across all commands)."""

_BACKBONE_PRESETS = {'resnet50': 'resnet50-16384', 'dinov2': 'dinov2-12288'}


def path(text: str) -> Path:
    """Parse a path argument; '' is refused (it would silently mean the current directory)."""
    if not text:
        raise argparse.ArgumentTypeError('an empty path names no file or folder')
    return Path(text)


def map_uri(text: str) -> str:
    """Parse a map argument: a directory (faiss:DIR) or a Milvus URI (docs/fleet.md)."""
    if not text:
        raise argparse.ArgumentTypeError('an empty map names no directory or store')
    return text


def flag(name: str) -> str:
    """Return the flag of a setting or field name: keyframe_distance_m -> --keyframe-distance-m."""
    return '--' + name.replace('_', '-')


def _parser(s: Setting, kind: type, check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """Make an argparse type: the text as `kind`, then `check` (SettingError: a usage error)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not {KIND_NAMES[kind]}') from None
        try:
            return check(value)
        except SettingError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = s.name  # argparse names the type in its messages
    return parse


def parse_value(s: Setting) -> Callable[[str], Any]:
    """Make an argparse type that parses a flag's text into the setting's type and checks it."""
    return _parser(s, s.kind, s.check)


def _item_parser(s: Setting) -> Callable[[str], Any]:
    """Make an argparse type for one value of a list setting, checked against its range."""
    return _parser(s, s.item, lambda value: s.check([value] * (s.length or 1))[0])


def _help(s: Setting, default: Any) -> str:
    notes = [f'default {default!r}']
    if s.low is not None:
        notes.append(s.range_text())
    return f'{s.description} ({", ".join(notes)})'.replace('%', '%%')


def add(group: Any, cls: Any, *names: str, several: Sequence[str] = (),
        required: Sequence[str] = (), defaults: Mapping[str, Any] | None = None) -> None:
    """Add the flags of settings `names` of configuration class `cls` to a parser or group.

    `several`: flags that take one or more values (a study over them, e.g. --input-size 288
    320 384); `required`: flags the command cannot run without; `defaults`: a command's own
    default for a setting (e.g. the demo's small input size), which its help then names.
    """
    known = {s.name: s for s in settings_of(cls)}
    for name in names:
        s = known[name]
        default = (defaults or {}).get(name, s.default)
        if s.kind is bool:  # --name / --no-name
            group.add_argument(flag(name), dest=name, default=default,
                               action=argparse.BooleanOptionalAction,
                               help=s.description.replace('%', '%%') + ' (default %(default)s)')
            continue
        if s.kind is list and s.item in (int, float, str):  # its values after one flag
            notes = f'default {default!r}' + (f', each in {s.range_text()}'
                                              if s.low is not None else '')
            group.add_argument(flag(name), dest=name, default=list(default),
                               nargs=s.length or '+', type=_item_parser(s),
                               help=f'{s.description} ({notes})'.replace('%', '%%'))
            continue
        if s.kind not in (int, float, str):
            raise TypeError(f'setting {name} ({s.kind.__name__}) has no flag form')
        kwargs: dict[str, Any] = dict(type=parse_value(s), dest=name, default=default,
                                      help=_help(s, default))
        if s.choices:
            kwargs['choices'] = s.choices
            kwargs['metavar'] = '{' + ','.join(str(c) for c in s.choices if c != '') + '}'
        if name in several:
            kwargs.update(nargs='+', default=[default])
        if name in required:
            kwargs.update(required=True, default=None)
        add_aliases(group, group.add_argument(flag(name), **kwargs))


def add_all(group: Any, cls: Any, defaults: Mapping[str, Any] | None = None) -> None:
    """Add the flags of every setting of configuration class `cls`."""
    add(group, cls, *(s.name for s in settings_of(cls)), defaults=defaults)


class _Deprecated(argparse.Action):
    """A hidden old flag: stores into the new flag's destination and says it is deprecated."""

    def __init__(self, option_strings: list[str], dest: str, new: str,
                 convert: Callable[[Any], Any] | None = None, append: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new, self.convert, self.append = new, convert, append

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f'{parser.prog}: note: {option_string} is deprecated, use {self.new}',
              file=sys.stderr)
        if self.convert is not None:
            values = self.convert(values)
        if self.append:  # the new flag is repeatable: so is the old one
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)


def add_aliases(group: Any, action: argparse.Action,
                old: Sequence[str] | None = None) -> argparse.Action:
    """Add the deprecated names of `action`'s flag as hidden aliases.

    The names are `old` when given (a command whose old flag meant something else, e.g. the
    demo's --image-size, now --camera-size), else those ALIASES lists for the flag, less any
    the command already uses for another flag.
    """
    new = action.option_strings[0]
    listed = old is None
    for name in (old if not listed else [o for o, target in ALIASES.items() if target == new]):
        backbone = name == '--backbone'  # named a backbone, now a preset
        try:
            group.add_argument(
                name, action=_Deprecated, new=new, dest=action.dest, nargs=action.nargs,
                convert=_BACKBONE_PRESETS.__getitem__ if backbone else None,
            append=isinstance(action, argparse._AppendAction),
                choices=tuple(_BACKBONE_PRESETS) if backbone else None,
                type=None if backbone else action.type, default=argparse.SUPPRESS,
                help=argparse.SUPPRESS)
        except argparse.ArgumentError:
            if not listed:
                raise  # an old name the command asked for must not be lost silently
    return action


def build(cls: Any, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build configuration `cls` from parsed flags (unset fields keep their defaults)."""
    return from_values(cls, {k: v for k, v in vars(args).items() if v is not None}, **overrides)
