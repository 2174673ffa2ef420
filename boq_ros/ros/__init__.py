"""The ROS 2 adapter of boq_ros: the loop-closure node, message conversion, DDS settings.

Only this package (and the CLI) imports rclpy and ROS messages; the core never does.
"""
