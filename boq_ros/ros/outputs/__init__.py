"""The node's outputs for SLAM backends: one adapter module per consumer, registered here.

Adding an output: a module with an `Output` subclass (its enable parameter, counters and, for a
backend's own messages, the interfaces it imports lazily), its settings in
`boq_ros.ros.params.NodeSettings`, and one entry in OUTPUTS. The node knows no adapter by name:
it makes them with `create`, gives each enabled one every decision, shows their counters in
/diagnostics and closes them at cleanup. docs/backends.md says how each backend is connected.
"""
from boq_ros.ros.outputs.base import Decision, Output, OutputContext, OutputError
from boq_ros.ros.outputs.candidates import CandidateOutput
from boq_ros.ros.outputs.hydra import PoseGraphOutput
from boq_ros.ros.outputs.lio_sam import LioSamOutput
from boq_ros.ros.outputs.rtabmap import RtabmapOutput
from boq_ros.ros.params import PARAMS, NodeSettings

__all__ = ['COUNTERS', 'OUTPUTS', 'Decision', 'Output', 'OutputContext', 'OutputError', 'check',
           'create']

OUTPUTS: tuple[type[Output], ...] = (CandidateOutput, LioSamOutput, PoseGraphOutput,
                                     RtabmapOutput)
"""Every output, in the order each decision is given to them (our own message first)."""
COUNTERS: tuple[str, ...] = tuple(name for kind in OUTPUTS for name in kind.counters)
"""The /diagnostics totals the outputs count (each shown as `<name>_total`)."""


def _wanted(kind: type[Output], settings: NodeSettings) -> bool:
    """Say whether configure makes this output: always on, live-enabled, or enabled now."""
    return (kind.parameter is None or PARAMS[kind.parameter].when == 'live'
            or kind.enabled(settings))


def check(settings: NodeSettings) -> None:
    """Import the backend messages of the enabled outputs (OutputError naming what is missing)."""
    for kind in OUTPUTS:
        if kind.parameter is not None and kind.enabled(settings):
            kind.load()


def create(context: OutputContext, settings: NodeSettings) -> list[Output]:
    """Make the outputs these settings ask for; on a failure close those already made."""
    made: list[Output] = []
    try:
        for kind in OUTPUTS:
            if _wanted(kind, settings):
                made.append(kind(context, settings))
    except BaseException:
        for output in reversed(made):
            output.close()
        raise
    return made
