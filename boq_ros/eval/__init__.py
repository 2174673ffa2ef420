"""Offline evaluation of loop closure and place recognition (see docs/eval.md).

The metrics, records and ground truth are numpy-only; the runner (bags, model, detector) and the
report (matplotlib) are imported from their modules when needed.
"""
from boq_ros.eval.groundtruth import GroundTruth, KeyframePositions
from boq_ros.eval.metrics import EvalConfig, EvalResult, evaluate
from boq_ros.eval.records import CandidateRecord, read_records, write_records

__all__ = ['CandidateRecord', 'EvalConfig', 'EvalResult', 'GroundTruth', 'KeyframePositions',
           'evaluate', 'read_records', 'write_records']
