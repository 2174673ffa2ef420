"""One settings vocabulary: every ROS parameter and every `boq-ros` flag is exactly one field.

Each name is declared once (boq_ros/settings.py and the node's own NodeSettings); the node's
parameter declarations and the command-line flags are generated from the declarations. These
tests walk both surfaces and check each against its field: the same name, default, range and
choices; and that deprecated flag names only ever point to the current ones.
"""
import argparse

import pytest

from boq_ros import settings
from boq_ros.cli import build_parser, options
from boq_ros.eval.metrics import EvalConfig
from boq_ros.ros import params

FIELDS = {s.name: s for s in settings.iter_settings(*params.SETTING_CLASSES, EvalConfig,
                                                    settings.PoseGraphSettings)}

COMMAND_INPUTS = {
    # What a command reads or writes, not a setting of the pipeline: files, topics, switches.
    'images', 'bag', 'query_bag', 'image_topic', 'query_image_topic', 'include_depth', 'out',
    'append', 'no_progress', 'pose_topic', 'pose_child_frame', 'pose_file', 'query_pose_file',
    'pose_format', 'pose_times', 'records', 'cache_dir', 'no_cache', 'json', 'no_verify',
    'frames', 'rate', 'domain_id', 'no_offline', 'camera_size', 'queries', 'block',
    'topics', 'remap', 'clock', 'start_offset', 'qos', 'record_topic', 'record_out', 'lockstep',
    'wait_subscribers', 'answer_timeout', 'allow_network', 'force', 'map', 'help',
    'depth_topic', 'camera_info_topic', 'ray', 'ray_workers',
}
OPTIONAL_INPUTS = {('eval', 'odometry_topic')}
"""Node settings a command takes as an optional input: no default, absent skips that part."""
DEMO_SCENARIO = {'input_size': 192, 'radius_m': 5.0}
"""The demo's own defaults for its small synthetic street (documented in docs/demo.md)."""
WEIGHTS_PRESET = ('weights download', 'preset')
"""Which released preset files to fetch: a preset name as everywhere, or 'all'."""


def _commands(parser: argparse.ArgumentParser, words=()):
    """Every (sub)command parser, with its name: ('map', 'build'), ('eval',), ..."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield words, parser
        return
    for name, child in subs[0].choices.items():
        yield from _commands(child, (*words, name))


COMMANDS = dict(_commands(build_parser()))


def _flags():
    for words, parser in COMMANDS.items():
        for action in parser._actions:
            if action.option_strings and not isinstance(action, options._Deprecated):
                yield ' '.join(words), action


def test_every_name_is_declared_once():
    names = [s.name for cls in (*params.SETTING_CLASSES, EvalConfig)
             for s in settings.settings_of(cls)]
    assert len(names) == len(set(names))


def test_every_ros_parameter_is_one_field_with_its_default_and_range():
    pose_graph = {s.name for s in settings.settings_of(settings.PoseGraphSettings)}
    assert set(params.PARAMS) == set(FIELDS) - params.NOT_PARAMETERS - {'radius_m'} - pose_graph
    for name, param in params.PARAMS.items():
        field = FIELDS[name]
        assert param.setting == field, name
        descriptor = param.descriptor()
        assert descriptor.description == field.description
        if field.low is None or field.kind is list:  # rclpy ranges are for scalars
            assert not descriptor.integer_range and not descriptor.floating_point_range, name
            if field.low is not None:
                assert f'each value in {field.range_text()}' in descriptor.additional_constraints
        else:
            (bounds,) = descriptor.integer_range or descriptor.floating_point_range
            assert (bounds.from_value, bounds.to_value) == (field.low, field.high), name
        for choice in field.choices:
            assert repr(choice) in descriptor.additional_constraints, name


@pytest.mark.parametrize('command, action', list(_flags()),
                         ids=lambda x: x if isinstance(x, str) else x.option_strings[0])
def test_every_flag_is_one_field_with_its_default_and_range(command, action):
    name = action.dest
    if name not in FIELDS:
        assert name in COMMAND_INPUTS, f'{command} {action.option_strings[0]} is no setting'
        return
    field = FIELDS[name]
    assert action.option_strings[0] == options.flag(name)
    if (command, name) in OPTIONAL_INPUTS:
        assert action.default is None and field.kind is str
        return
    if (command, name) == WEIGHTS_PRESET:
        assert set(action.choices) == {*settings.PRESET_NAMES, 'all'}
        return
    default = DEMO_SCENARIO.get(name, field.default) if command == 'demo' else field.default
    if action.required:
        assert action.default is None
    elif action.nargs == '+':
        assert action.default == [default]
    else:
        assert action.default == default
    assert tuple(action.choices or ()) == tuple(c for c in field.choices)
    if field.low is not None:  # the flag checks the field's range, bounds included
        parse = action.type
        assert parse(str(field.high)) == field.high
        with pytest.raises(argparse.ArgumentTypeError, match=name):
            parse(str(field.high * 2 + 1))
        if field.above_low:
            with pytest.raises(argparse.ArgumentTypeError):
                parse(str(field.low))
        else:
            assert parse(str(field.low)) == field.low


def test_flag_names_mean_one_thing_in_every_command():
    dests: dict[str, set[str]] = {}
    for _, action in _flags():
        dests.setdefault(action.option_strings[0], set()).add(action.dest)
    assert all(len(d) == 1 for d in dests.values()), {k: d for k, d in dests.items()
                                                      if len(d) > 1}


def test_deprecated_names_point_to_current_flags_and_say_so(capsys):
    current = {a.option_strings[0] for _, a in _flags()}
    for old, new in options.ALIASES.items():
        assert old not in current or old == '--image-size', old  # demo: --camera-size's
        assert new in current, new
    parser = COMMANDS[('map', 'build')]
    args = parser.parse_args(['--bag', 'b', '--out', 'o', '--checkpoint', 'c', '--backbone',
                              'dinov2', '--keyframes', 'interval', '--interval-s', '2',
                              '--index', 'hnsw', '--resize', 'square', '--image-size', '320'])
    assert (args.preset, args.keyframe_mode, args.keyframe_interval_s, args.index_kind,
            args.resize_policy, args.input_size) == (
        'dinov2-12288', 'interval', 2.0, 'hnsw', 'square', 320)
    err = capsys.readouterr().err
    for old, new in (('--backbone', '--preset'), ('--interval-s', '--keyframe-interval-s'),
                     ('--index', '--index-kind'), ('--image-size', '--input-size')):
        assert f'{old} is deprecated, use {new}' in err
    with pytest.raises(SystemExit):
        parser.parse_args(['--bag', 'b', '--out', 'o', '--checkpoint', 'c',
                           '--keyframe-interval-s', '0'])
    assert 'keyframe_interval_s must be in (0, 1e+06]' in capsys.readouterr().err


def test_backend_parameters_are_its_fields_and_share_the_nodes_names():
    """pose_graph_node: its own settings and PoseGraphSettings, all read once at startup.

    A name both nodes have (odometry_topic, odometry_qos, ...) is one concept: same type and
    choices.
    """
    from boq_ros.ros.pose_graph_node import PARAMS, BackendSettings

    fields = {s.name: s for s in settings.iter_settings(BackendSettings,
                                                        settings.PoseGraphSettings)}
    assert set(PARAMS.params) == set(fields)
    for name, param in PARAMS.params.items():
        assert param.setting.when == 'startup' and param.descriptor().read_only, name
        assert param.setting.default == fields[name].default, name
        if name in params.PARAMS:
            vpr = params.PARAMS[name].setting
            assert (vpr.kind, vpr.choices) == (fields[name].kind, fields[name].choices), name


def test_core_defaults_equal_the_node_parameters():
    from boq_ros.detector import DetectorConfig

    config = DetectorConfig()
    for field in settings.settings_of(DetectorConfig):
        assert params.PARAMS[field.name].default == getattr(config, field.name)


def test_the_vocabulary_names_what_the_modules_implement():
    from boq_ros.extractor import PRECISIONS
    from boq_ros.keyframe_map.index import KINDS
    from boq_ros.model.presets import PRESETS
    from boq_ros.preprocess import POLICIES

    assert settings.PRESET_NAMES == tuple(PRESETS)
    assert settings.PRECISIONS == tuple(PRECISIONS)
    assert settings.INDEX_KINDS == KINDS and settings.RESIZE_POLICIES == POLICIES
