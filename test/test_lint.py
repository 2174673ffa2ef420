"""Lint as ROS 2 packages do (ament_flake8 + ament_pep257 rules, via ruff; see ruff.toml)."""
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]
PATHS = ['boq_ros', 'test', 'benchmarks', 'scripts', 'launch', 'setup.py', 'scripts/vpr_node']


def test_ruff_clean():
    paths = [p for p in PATHS if (ROOT / p).exists()]
    result = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', *paths],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
