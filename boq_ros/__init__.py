"""boq_ros: visual loop closure with Bag-of-Queries place descriptors.

The core (model, preprocessing, keyframe map, detector, evaluation) never imports ROS; the
`boq_ros.ros` layer adapts it to ROS 2.  The generated interfaces (`boq_ros.msg`, `boq_ros.srv`)
may live in another directory of the same name (a colcon install space or the development
venv); extending ``__path__`` lets both halves import as one package.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = '0.1.0'
