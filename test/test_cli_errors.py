"""One error format and exit-code convention for every `boq-ros` command, handled centrally."""
import argparse

import pytest

from boq_ros import cli
from boq_ros.cli import UsageError, command_name, main


def raising(exc: BaseException):
    def func(args: argparse.Namespace) -> int:
        raise exc

    return func


@pytest.mark.parametrize('exc, status, message', [
    (UsageError('--a and --b exclude each other'), 2, '--a and --b exclude each other'),
    (ValueError('map /m has no keyframes'), 1, 'map /m has no keyframes'),
    (FileNotFoundError('bag /x does not exist'), 1, 'bag /x does not exist'),
    (PermissionError(13, 'Permission denied', '/out'), 1, "[Errno 13] Permission denied: '/out'"),
    (OSError(), 1, 'OSError'),
    (KeyboardInterrupt(), 130, 'interrupted'),
])
@pytest.mark.parametrize('argv, command', [
    (['weights', 'list'], 'weights list'),
    (['map', 'info', '/nowhere'], 'map info'),
    (['attention', 'a.png', '--checkpoint', 'c.pth', '--out', 'o.png'], 'attention'),
])
def test_what_a_command_raises_becomes_one_line_and_an_exit_status(
        monkeypatch, capsys, exc, status, message, argv, command):
    # Replace the command's function after parsing, whatever the real command would do.
    real_parse = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        parsed, extra = real_parse(self, args, namespace)
        if self.prog == 'boq-ros':
            parsed.func = raising(exc)
        return parsed, extra

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_known_args', parse_known_args)
    assert main(argv) == status
    captured = capsys.readouterr()
    assert captured.err == f'boq-ros {command}: error: {message}\n'
    assert captured.out == ''


def test_bugs_keep_their_traceback(monkeypatch):
    parser = argparse.ArgumentParser(prog='boq-ros')
    parser.add_subparsers(dest='command').add_parser('x').set_defaults(
        func=raising(RuntimeError('bug')))
    monkeypatch.setattr(cli, 'build_parser', lambda: parser)
    with pytest.raises(RuntimeError, match='bug'):
        main(['x'])


def test_argparse_usage_errors_use_the_same_format(capsys):
    with pytest.raises(SystemExit) as exited:
        main(['weights', 'download', '--preset', 'nope'])
    assert exited.value.code == 2
    assert "boq-ros weights download: error: argument --preset: invalid choice: 'nope'" in (
        capsys.readouterr().err)


def test_nested_command_names():
    parser = cli.build_parser()
    for argv, name in [(['weights', 'list'], 'weights list'),
                       (['map', 'info', 'm'], 'map info'),
                       (['replay', 'b.mcap'], 'replay')]:
        assert command_name(parser, parser.parse_args(argv)) == name


def test_real_commands_raise_instead_of_printing(tmp_path, capsys):
    # replay: a flag combination that cannot work is a usage error, before any ROS import.
    assert main(['replay', str(tmp_path / 'b.mcap'), '--lockstep']) == 2
    assert capsys.readouterr().err == (
        "boq-ros replay: error: --lockstep waits for the node's answers: give --record-out\n")
    # attention: failed work.
    status = main(['attention', str(tmp_path / 'missing.png'), '--checkpoint', 'c.pth',
                   '--out', str(tmp_path / 'o.png')])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith('boq-ros attention: error: cannot read image')
    assert err.count('\n') == 1
