"""What every node process of the package shares: Ctrl-C handling, input QoS, error text.

Kept apart from the nodes so that a light node (pose_graph_node) does not import the heavy one
(the loop-closure node pulls in the model) for a few helpers.
"""
from typing import Any

from rclpy.qos import (
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
    qos_profile_system_default,
)

QOS_CHOICES = ('sensor_data', 'reliable', 'system_default')


def reason(err: Exception) -> str:
    """Say why a request failed: refusals name their cause, anything else its type too."""
    return str(err) if isinstance(err, ValueError | OSError) else f'{type(err).__name__}: {err}'


def subscription_qos(kind: str, depth: int) -> QoSProfile:
    """Make a subscription QoS from its parameter value (input_qos, odometry_qos)."""
    base = {'sensor_data': qos_profile_sensor_data, 'reliable': QoSProfile(depth=10),
            'system_default': qos_profile_system_default}[kind]
    qos = QoSProfile(depth=depth, history=base.history, reliability=base.reliability,
                     durability=base.durability)
    if kind == 'reliable':
        qos.reliability = ReliabilityPolicy.RELIABLE
    return qos


def ignore_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler while the node shuts down: a later Ctrl-C does nothing."""


def interrupt_once(signum: int, frame: Any) -> None:
    """SIGINT handler while the node runs: the first Ctrl-C stops it, later ones are ignored.

    A terminal's Ctrl-C reaches both `ros2 launch` and the node, and launch then forwards one
    more SIGINT: that second one must not interrupt the shutdown the first started (it raised
    KeyboardInterrupt in main()'s cleanup: a traceback and "process has died [exit code -2]").
    rclpy's own handler, installed over this one by rclpy.init, runs first and chains to it.
    """
    import signal

    signal.signal(signal.SIGINT, ignore_interrupt)
    raise KeyboardInterrupt
