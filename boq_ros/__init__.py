"""boq_ros: visual loop closure with Bag-of-Queries place descriptors.

The core (model, preprocessing, keyframe map, detector, evaluation) never imports ROS; the
`boq_ros.ros` layer adapts it to ROS 2.  The generated interfaces (`boq_ros.msg`, `boq_ros.srv`)
may live in another directory of the same name (a colcon install space or the development
venv); extending ``__path__`` lets both halves import as one package.

torch (inference) and faiss (map search) both use OpenMP. With the default (active) wait policy
the threads of one spin after their work and starve the other: measured on 2 cores, a forward
pass right after a faiss search took 0.7-3 s instead of 0.18 s. Passive waiting removes that. It
must be set before either library loads, hence here; a value set by the user wins.
"""
import os
from pkgutil import extend_path

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

__path__ = extend_path(__path__, __name__)

__version__ = '0.1.0'
