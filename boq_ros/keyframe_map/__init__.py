"""The keyframe map: a persistent, searchable set of place descriptors with their metadata.

ROS-free.  See docs/map.md for the on-disk format, the index kinds and when to use which.
"""
from boq_ros.keyframe_map.base import (
    KeyframeBlock,
    KeyframeStore,
    RecentWindow,
    SearchFilter,
    SearchResult,
)
from boq_ros.keyframe_map.features import LocalFeatures
from boq_ros.keyframe_map.index import IndexSpec
from boq_ros.keyframe_map.map import KeyframeMap
from boq_ros.keyframe_map.meta import KeyframeMeta
from boq_ros.keyframe_map.schema import SCHEMA_VERSION, MapError, MapNotFound, MapSchema
from boq_ros.settings import MapSettings

__all__ = ['IndexSpec', 'KeyframeBlock', 'KeyframeMap', 'KeyframeMeta', 'KeyframeStore',
           'LocalFeatures', 'MapError', 'MapNotFound', 'MapSchema', 'MapSettings',
           'RecentWindow', 'SCHEMA_VERSION', 'SearchFilter', 'SearchResult']
