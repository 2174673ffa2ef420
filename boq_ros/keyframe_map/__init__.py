"""The keyframe map: a persistent, searchable set of place descriptors with their metadata.

ROS-free.  See docs/map.md for the on-disk format, the index kinds and when to use which.
"""
from boq_ros.keyframe_map.features import LocalFeatures
from boq_ros.keyframe_map.index import IndexSpec
from boq_ros.keyframe_map.map import KeyframeMap, RecentWindow, SearchFilter, SearchResult
from boq_ros.keyframe_map.meta import KeyframeMeta
from boq_ros.keyframe_map.schema import SCHEMA_VERSION, MapError, MapSchema
from boq_ros.settings import MapSettings

__all__ = ['IndexSpec', 'KeyframeMap', 'KeyframeMeta', 'LocalFeatures', 'MapError', 'MapSchema',
           'MapSettings', 'RecentWindow', 'SCHEMA_VERSION', 'SearchFilter', 'SearchResult']
