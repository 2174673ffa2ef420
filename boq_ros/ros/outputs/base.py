"""What an output adapter is: made at configure, given every decision, closed at cleanup.

An adapter turns the node's decisions into one consumer's interface (a topic, a service). It is
enabled by one parameter (``parameter``; None: always on). An adapter whose enable parameter is
read at configure exists only when enabled; one whose parameter is live exists from configure
on and is given decisions only while its parameter is true. Adapters for a backend whose
messages are not part of this package import them lazily (``load_interfaces``), so the node
runs without them and configure names what is missing when such an adapter is enabled.
"""
from collections.abc import Callable
from dataclasses import dataclass
import importlib
from types import ModuleType
from typing import Any, ClassVar

from boq_ros.detector import Candidate, Detection, PoseKind, Verification
from boq_ros.ros.params import NodeSettings


class OutputError(ValueError):
    """Raised at configure for an output that cannot work; the message names the cause."""


def load_interfaces(parameter: str, package: str, upstream: str,
                    kinds: tuple[str, ...] = ('msg',)) -> tuple[ModuleType, ...]:
    """Import a backend's interface modules (``<package>.msg``, ...), or say what is missing."""
    try:
        importlib.import_module(package)
    except ImportError as err:
        if isinstance(err, ModuleNotFoundError) and err.name == package:
            raise OutputError(f'{parameter} needs {package} ({upstream}): not found') from None
        raise OutputError(f'{parameter} needs {package} ({upstream}): it cannot be imported '
                          f'({err})') from None
    modules = []
    for kind in kinds:
        try:
            modules.append(importlib.import_module(f'{package}.{kind}'))
        except ImportError as err:
            raise OutputError(f'{parameter} needs {package} ({upstream}): its {kind} cannot be '
                              f'imported ({err})') from None
    return tuple(modules)


def resolve(node: Any, name: str, parameter: str, *, service: bool = False) -> str:
    """Resolve a topic or service name now, so a bad one fails configure naming its parameter."""
    try:
        if service:
            return node.resolve_service_name(name)
        return node.resolve_topic_name(name)
    except RuntimeError as err:  # rclpy's RCLError
        kind = 'service' if service else 'topic'
        raise OutputError(f'parameter {parameter}: {name!r} is not a valid {kind} name '
                          f'({err})') from None


@dataclass(frozen=True)
class Decision:
    """One query's decision as the outputs receive it (every keyframe, accepted or not)."""

    detection: Detection
    model_id: str
    map_id: str

    @property
    def loop(self) -> Candidate | None:
        """Return the accepted candidate (None when the query closed no loop)."""
        return self.detection.match


def metric_loop(decision: Decision, context: 'OutputContext', skipped: str
                ) -> tuple[Candidate, Verification] | None:
    """Return the accepted loop and its metric verification; count `skipped` for a loop without.

    For the backends that take only metric loops (a pose up to scale would pull their graph
    wrong).
    """
    loop = decision.loop
    if loop is None:
        return None
    v = loop.verification
    if (v is None or not v.verified or v.pose_kind != PoseKind.METRIC
            or v.relative_pose_base is None):
        context.count(skipped)
        return None
    return loop, v


@dataclass(frozen=True)
class OutputContext:
    """What an adapter may use of the node."""

    node: Any  # the rclpy node the adapter creates its publishers, clients, ... on
    count: Callable[[str], None]  # add one to the /diagnostics total `<name>_total`
    fail: Callable[[str], None]  # an output error: counted, shown as last_error, logged


class Output:
    """One consumer's output (subclasses: one module each, listed in outputs.OUTPUTS)."""

    parameter: ClassVar[str | None] = None
    """The NodeSettings field that enables it; None: always on."""
    counters: ClassVar[tuple[str, ...]] = ()
    """The /diagnostics totals it counts (each shown as `<name>_total`, 0 until counted)."""
    interfaces: ClassVar[tuple[str, str, tuple[str, ...]] | None] = None
    """(package, upstream repository, kinds) of the backend messages it imports, if any."""

    def __init__(self, context: OutputContext, settings: NodeSettings) -> None:
        self.context = context
        self._owned: list[tuple[Callable[[Any], Any], Any]] = []

    @classmethod
    def enabled(cls, settings: NodeSettings) -> bool:
        """Say whether the decisions go to this output under these settings."""
        return cls.parameter is None or bool(getattr(settings, cls.parameter))

    @classmethod
    def load(cls) -> tuple[ModuleType, ...]:
        """Import the backend's interface modules (OutputError naming what is missing)."""
        if cls.interfaces is None:
            return ()
        package, upstream, kinds = cls.interfaces
        return load_interfaces(cls.parameter or cls.__name__, package, upstream, kinds)

    def publish(self, decision: Decision) -> None:
        """Send what this consumer takes of one decision."""
        raise NotImplementedError

    def gauges(self) -> list[tuple[str, int]]:
        """Return the current values it shows in /diagnostics besides its totals."""
        return []

    def own(self, destroy: Callable[[Any], Any], entity: Any) -> Any:
        """Keep an rclpy entity to destroy at close (e.g. node.destroy_publisher); return it."""
        self._owned.append((destroy, entity))
        return entity

    def close(self) -> None:
        """Destroy what the adapter created on the node, newest first."""
        while self._owned:
            destroy, entity = self._owned.pop()
            destroy(entity)
