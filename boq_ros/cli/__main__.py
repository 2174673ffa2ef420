"""Allow `python -m boq_ros.cli`."""
import sys

from boq_ros.cli import main

sys.exit(main())
