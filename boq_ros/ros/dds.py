"""A DDS environment that keeps every packet on this machine.

Without ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, Fast DDS multicasts discovery on every network
interface. Tests, benchmarks, the replay tool and the demo start their DDS processes with
`safe_dds_environment`, and refuse to run with an environment that would leave the machine.
This module does not import rclpy: it only prepares environments for processes that will.
"""
from collections.abc import Mapping
import os
from pathlib import Path

FASTDDS_PROFILE = Path(__file__).with_name('fastdds_profile.xml')
MAX_DOMAIN_ID = 101  # highest domain id that is valid for every RMW on Linux


class UnsafeDdsEnvironment(RuntimeError):
    """Raised when a DDS process would be started with discovery beyond localhost."""


def safe_dds_environment(domain_id: int, log_dir: str | os.PathLike,
                         base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return `base` (default: os.environ) plus the variables that confine DDS to loopback."""
    if not 0 <= domain_id <= MAX_DOMAIN_ID:
        raise ValueError(f'ROS_DOMAIN_ID must be within 0..{MAX_DOMAIN_ID}, got {domain_id}')
    env = dict(os.environ if base is None else base)
    env.update({
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'ROS_DOMAIN_ID': str(domain_id),
        'ROS_LOG_DIR': str(log_dir),
        'FASTDDS_DEFAULT_PROFILES_FILE': str(FASTDDS_PROFILE),
        'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp',
    })
    env.pop('ROS_LOCALHOST_ONLY', None)  # ignored since Kilted; keep one source of truth
    return env


def check_dds_environment(env: Mapping[str, str] | None = None) -> None:
    """Refuse an environment whose DDS discovery could reach beyond this machine."""
    env = os.environ if env is None else env
    value = env.get('ROS_AUTOMATIC_DISCOVERY_RANGE', '')
    if value != 'LOCALHOST':
        raise UnsafeDdsEnvironment(
            'ROS_AUTOMATIC_DISCOVERY_RANGE is '
            f'{value!r}, not LOCALHOST: DDS discovery would leave this machine. '
            'Export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a ROS_DOMAIN_ID, or pass '
            '--allow-network to accept network discovery deliberately.')
