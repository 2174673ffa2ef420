#!/usr/bin/env python3
"""Point the ROS wheels' exported cmake files at this interpreter's include directories.

The `ros-*` PyPI wheels ship `*__rosidl_generator_pyExport.cmake` files that name the include
directories of the machine that built them (/opt/python/cp311-cp311/...). CMake refuses them
("includes non-existent path"), so before building interfaces against a venv we rewrite those
paths to this interpreter's Python and NumPy include directories. Idempotent.
"""
from pathlib import Path
import re
import sys
import sysconfig

import numpy


def main(prefix: str) -> int:
    python_include = sysconfig.get_paths()['include']
    numpy_include = numpy.get_include()
    pattern = re.compile(r'/opt/python/cp3\d+-cp3\d+/[^;"]*')
    fixed = 0
    for path in Path(prefix, 'share').glob('*/cmake/*__rosidl_generator_pyExport.cmake'):
        text = path.read_text()

        def replace(match: 're.Match[str]') -> str:
            return numpy_include if 'numpy' in match.group(0) else python_include

        new = pattern.sub(replace, text)
        if new != text:
            path.write_text(new)
            fixed += 1
    print(f'fix_ros_wheel_cmake: rewrote {fixed} exported cmake file(s) under {prefix}/share')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
