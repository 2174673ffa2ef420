"""Geometric verification of loop candidates: local features, robust geometry, relative pose.

Core, no ROS: ``camera`` (intrinsics), ``features`` (the feature kinds), ``geometry`` (the
estimators and their covariance), ``verifier`` (the detector's verification test).
"""
from boq_ros.verification.camera import CameraModel as CameraModel
from boq_ros.verification.camera import CameraModelError as CameraModelError
from boq_ros.verification.features import FEATURE_KINDS as FEATURE_KINDS
from boq_ros.verification.features import FeatureError as FeatureError
from boq_ros.verification.verifier import GeometricVerifier as GeometricVerifier
from boq_ros.verification.verifier import verify_pair as verify_pair
