#!/usr/bin/env python3
"""Give a second venv the non-ROS packages of the first one, without a second copy.

Usage: share_site_packages.py REQUIREMENTS SOURCE_VENV TARGET_VENV

The Jazzy lane (Makefile, `venv-jazzy`) needs the same torch, faiss, numpy, pytest, colcon, ...
as the Kilted venv, only with other `ros-*` wheels. This script (run with TARGET_VENV's python)
links every distribution that REQUIREMENTS pins, except the `ros-*` ones, from SOURCE_VENV's
site-packages into TARGET_VENV/shared-site (a directory of symlinks: the files stay where they
are), puts that directory on TARGET_VENV's sys.path with a .pth file, and writes TARGET_VENV's
console scripts for those distributions (colcon, pytest, ...). The ROS packages of SOURCE_VENV
stay invisible to TARGET_VENV. Idempotent: the link directory is rebuilt from scratch each run.
"""
from importlib import metadata
from pathlib import Path
import re
import shutil
import sys
import sysconfig

PTH_NAME = 'boq_ros_shared_site.pth'


def pinned_names(requirements: Path) -> list[str]:
    names = []
    for line in requirements.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if not line or line.startswith('-'):
            continue
        name = re.match(r'[A-Za-z0-9._-]+', line).group(0)
        if not name.lower().startswith('ros-'):
            names.append(name)
    return names


def normalize(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def top_level_entries(dist: metadata.Distribution) -> set[str]:
    """First path components, inside site-packages, of the files a distribution installed."""
    entries = set()
    for file in dist.files or []:
        parts = Path(file).parts
        if not parts or parts[0] == '..' or parts[0] == '__pycache__' or parts[0].endswith('.pth'):
            continue
        entries.add(parts[0])
    return entries


def main(requirements: str, source_venv: str, target_venv: str) -> int:
    purelib = Path(sysconfig.get_path('purelib'))
    source_site = Path(source_venv) / purelib.relative_to(sys.prefix)
    target = Path(target_venv)
    if Path(sys.prefix).resolve() != target.resolve():
        raise SystemExit(f'run this with the python of {target}, not {sys.executable}')
    dists = {normalize(d.metadata['Name']): d
             for d in metadata.distributions(path=[str(source_site)])}
    ros_entries = set()
    for name, dist in dists.items():
        if name.startswith('ros-'):
            ros_entries |= top_level_entries(dist)

    shared = target / 'shared-site'
    if shared.exists():
        shutil.rmtree(shared)
    shared.mkdir(parents=True)
    bin_dir = target / 'bin'
    scripts = 0
    for name in pinned_names(Path(requirements)):
        dist = dists.get(normalize(name))
        if dist is None:
            raise SystemExit(f'{name} is pinned in {requirements} but not in {source_site}')
        entries = top_level_entries(dist)
        clash = entries & ros_entries
        if clash:
            raise SystemExit(f'{name} shares {sorted(clash)} with a ROS package: cannot link it')
        for entry in entries:
            link = shared / entry
            if not link.exists():
                link.symlink_to(source_site / entry)
        for ep in dist.entry_points.select(group='console_scripts'):
            module, _, attr = ep.value.partition(':')
            call = f'{attr.split()[0]}()' if attr else 'main()'
            imp = f'from {module} import {attr.split(".")[0]}' if attr else f'import {module}'
            script = bin_dir / ep.name
            script.write_text(f'#!{sys.executable}\nimport sys\n{imp}\n'
                              f'if __name__ == "__main__":\n    sys.exit({call})\n')
            script.chmod(0o755)
            scripts += 1
    (purelib / PTH_NAME).write_text(f'{shared}\n')
    print(f'share_site_packages: {len(list(shared.iterdir()))} link(s) in {shared}, '
          f'{scripts} console script(s) in {bin_dir}')
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    sys.exit(main(*sys.argv[1:]))
