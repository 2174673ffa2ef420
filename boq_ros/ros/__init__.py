"""The ROS 2 adapter of boq_ros: the loop-closure node, message conversion, DDS settings.

Only this package (and the CLI) imports rclpy and ROS messages; the core never does.

The node runs torch (inference) and faiss (map search) in one process. Both use OpenMP; with
the default (active) wait policy, the threads of one spin after their work and starve the other:
measured on 2 cores, a forward pass right after a faiss search took 0.7-3 s instead of 0.18 s.
Passive waiting removes that. It must be set before either library loads, hence here (importing
the node module imports this package first); a value set by the user wins.
"""
import os

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
