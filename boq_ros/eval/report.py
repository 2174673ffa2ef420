"""Evaluation outputs people read: a JSON report, a short Markdown summary and PNG plots.

The JSON report is the complete record (settings, timings, metrics, curves); the Markdown summary
is what `boq-ros eval` prints; the plots are for looking at failures (PR curve, similarity matrix,
trajectory with the accepted loop edges coloured true / false positive).
"""
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
import datetime
import json
import os
from pathlib import Path
import shutil
from typing import Any

import numpy as np

from boq_ros import __version__
from boq_ros.eval.groundtruth import GroundTruth
from boq_ros.eval.metrics import EvalConfig, EvalResult

MAX_MATRIX_SIDE = 800  # similarity matrices are subsampled to at most this many rows / columns


def _pct(value: float | None) -> str:
    return '-' if value is None else f'{100 * value:.1f}'


def _num(value: float | None, digits: int = 3) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def _threshold(metrics: Mapping[str, Any]) -> str:
    """Format the R@100%P threshold: a similarity, or an inlier count (verified runs)."""
    inliers = metrics.get('pr_score') == 'inliers'
    return _num(metrics['threshold_at_100_precision'], 0 if inliers else 3)


def markdown_summary(report: dict[str, Any]) -> str:
    """Short Markdown summary of a report (one row per run: input size, then verified)."""
    runs = report['runs']
    ks = list(runs[0]['metrics']['recall_at']) if runs else []
    lines = [f'# boq-ros eval: {report["task"].replace("_", " ")}', '']
    inputs = report['inputs']
    lines.append(f'- bag: `{inputs.get("bag", "-")}`'
                 + (f', query bag: `{inputs["query_bag"]}`' if inputs.get('query_bag') else ''))
    lines.append(f'- model: `{inputs.get("model_id", "-")}`, image topic '
                 f'`{inputs.get("image_topic", "-")}`, ground truth: '
                 f'{inputs.get("ground_truth", "-")}')
    if inputs.get('random_weights'):
        lines.append("- **randomly initialised weights**: these numbers say nothing about BoQ's "
                     'accuracy, only that the pipeline runs')
    if runs:
        m = runs[0]['metrics']
        lines.append(f'- radius {m["radius_m"]:g} m; {m["num_queries"]} query keyframes, '
                     f'{m["num_positive_queries"]} with a true revisit')
    lines += ['', '| input | ' + ' | '.join(f'R@{k}' for k in ks)
              + ' | AUC-PR | R@100%P (thr) | F1-max | EP | accepted P / R |',
              '|---|' + '---|' * len(ks) + '---|---|---|---|---|']
    for run in runs:
        m = run['metrics']
        acc = m['accepted']
        lines.append(
            f'| {run["label"]} | ' + ' | '.join(_pct(m['recall_at'][k]) for k in ks)
            + f' | {_pct(m["auc_pr"])} | {_pct(m["max_recall_at_100_precision"])} '
            f'({_threshold(m)}) | {_pct(m["f1_max"])} | '
            f'{_pct(m["extended_precision"])} | {_pct(acc["precision"])} / '
            f'{_pct(acc["recall"])} |')
    lines += ['', 'Percentages; `-`: undefined (no positives) or deeper than the candidate lists']
    if any(run['metrics'].get('pr_score') == 'inliers' for run in runs):
        evaluation = report.get('evaluation', {})
        lines += ['', "Verified rows (`+ <features>`): R@K are retrieval's (the same candidates); "
                  'AUC-PR, R@100%P (threshold in inliers), F1-max and EP sweep the inliers of '
                  'the accepted loops; an accepted loop is correct within the radius, or with a '
                  f'metric relative pose within {evaluation.get("pose_translation_m", 1.0):g} m '
                  f'and {evaluation.get("pose_rotation_deg", 5.0):g} deg of the truth']
        lines += _verification_table(runs)
    stages = _stages(runs)
    if stages:
        lines += _timing_table(runs, stages)
    if report.get('trajectories'):
        from boq_ros.eval.trajectories import format_table

        lines += ['', '## Drift corrected by the loops (keyframe trajectories vs ground truth)',
                  '', format_table(report['trajectories']['scores']).rstrip()]
    if report.get('plots'):
        lines += ['', 'Plots: ' + ', '.join(f'`{p}`' for p in report['plots'])]
    return '\n'.join(lines) + '\n'


def _spread(entry: Mapping[str, Any] | None, digits: int) -> str:
    if not entry or entry.get('median') is None:
        return '-'
    return f'{entry["median"]:.{digits}f} / {entry["p90"]:.{digits}f}'


def _verification_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Pose kinds, pose errors, rejections by cause and verification time of verified runs."""
    lines = ['', '| input | loops by pose kind | rotation error p50 / p90 (deg) | translation '
             'error p50 / p90 (m) | rejected by cause | verify p50 / p90 (ms/query) |',
             '|---|---|---|---|---|---|']
    for run in runs:
        m = run['metrics']
        if m.get('pr_score') != 'inliers':
            continue
        pose = m.get('pose_errors') or {}
        kinds = ', '.join(f'{k} {n}' for k, n in pose.get('loops_by_pose_kind', {}).items()
                          if n) or '0'
        info = run.get('verification') or {}
        causes = ', '.join(f'{c} {n}' for c, n in info.get('rejected_by_cause', {}).items()
                           if n) or ('0' if info else '-')
        lines.append(f'| {run["label"]} | {kinds} | {_spread(pose.get("rotation_deg"), 2)} | '
                     f'{_spread(pose.get("translation_m"), 3)} | {causes} | '
                     f'{_spread(info.get("ms_per_query"), 1)} |')
    return lines


def _timing_table(runs: Sequence[dict[str, Any]], stages: list[str]) -> list[str]:
    lines = ['', '| input | frames | keyframes | skipped | '
              + ' | '.join(f'{s} (ms/frame)' for s in stages) + ' | frames/s | descriptors |',
              '|---|---|---|---|' + '---|' * len(stages) + '---|---|']
    for run in runs:
        per_frame = {s: 1000 * t / max(run['frames'], 1) for s, t in run['timings_s'].items()}
        lines.append(f'| {run["label"]} | {run["frames"]} | {run["keyframes"]} | '
                     f'{_skipped(run.get("skipped"))} | '
                     + ' | '.join(_num(per_frame.get(s), 2) for s in stages)
                     + f' | {_num(run["frames_per_s"], 1)} | '
                     + ('from cache' if run['cached'] else 'computed') + ' |')
    return lines


def _skipped(skipped: Mapping[str, int] | None) -> str:
    """Frames skipped by cause, e.g. 'decode 2, depth 1'; '-' when not known (recorded runs)."""
    if skipped is None:
        return '-'
    return ', '.join(f'{cause} {n}' for cause, n in skipped.items() if n) or '0'


STAGE_ORDER = ('read', 'queue', 'decode', 'describe', 'features', 'search', 'verify',
               'publish', 'total')
"""boq_ros.pipeline.STAGES (not imported: that would load the model code)."""


def _stages(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Stages of any run, in pipeline order (others after, as they come)."""
    names = list(dict.fromkeys(s for run in runs for s in run['timings_s']))
    return sorted(names, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER
                                        else len(STAGE_ORDER), names.index(s)))


def write_json(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write the report atomically (a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + '\n', encoding='utf-8')
    os.replace(tmp, path)


@contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh folder beside `out_dir` that becomes `out_dir` only if the block succeeds.

    So a failed run leaves neither an empty nor a partial `out_dir`. An existing `out_dir` keeps
    its other files: the new outputs replace only those of the same name.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f'output directory {out} exists and is not a directory')
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f'.{out.name}.tmp-{os.getpid()}'
    shutil.rmtree(staging, ignore_errors=True)  # the leftover of a killed run
    staging.mkdir()
    try:
        yield staging
        if out.is_dir():
            for path in staging.iterdir():
                os.replace(path, out / path.name)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_report(out_dir: str | os.PathLike, *, task: str, inputs: Mapping[str, Any],
                 detector: Mapping[str, Any], evaluation: EvalConfig,
                 runs: Sequence[Mapping[str, Any]], plots: Sequence[str],
                 files: Sequence[str] = (), extra: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Write report.json and summary.md with the skeleton every evaluation report shares.

    `runs` are the per-configuration entries (label, frames, keyframes, skipped (frames by
    cause, None when unknown), cached, timings_s, frames_per_s, metrics) that
    `markdown_summary` tabulates; `files` lists the outputs beyond
    the two written here; `extra` adds top-level sections.  Returns the report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        'boq_ros_version': __version__,
        'created_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'),
        'task': task,
        'inputs': dict(inputs),
        'detector': dict(detector),
        'evaluation': {'radius_m': evaluation.radius_m,
                       'recall_ks': list(evaluation.recall_ks),
                       'pose_translation_m': evaluation.pose_translation_m,
                       'pose_rotation_deg': evaluation.pose_rotation_deg},
        'runs': [dict(run) for run in runs],
        'plots': list(plots),
        'files': ['report.json', 'summary.md', *files],
        **(extra or {}),
    }
    write_json(out / 'report.json', report)
    (out / 'summary.md').write_text(markdown_summary(report), encoding='utf-8')
    return report


def plot_loop_closure(out_dir: str | os.PathLike, results: Sequence[tuple[str, EvalResult]],
                      ground_truth: GroundTruth, title: str) -> list[str]:
    """Write pr_curve.png (every result) and trajectory.png (the first); returns their names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_pr_curves(out / 'pr_curve.png', results)
    plot_trajectory(out / 'trajectory.png', ground_truth, results[0][1], title)
    return ['pr_curve.png', 'trajectory.png']


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(path: str | os.PathLike, results: Sequence[tuple[str, EvalResult]]) -> None:
    """Precision-recall curves of several runs on one set of axes.

    Appearance-only runs sweep the top-1 similarity, verified runs the accepted loops' inliers.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    for label, result in results:
        recall = result.curve.recall
        if recall is None or recall.size == 0:
            continue
        auc = result.summary.auc_pr
        score = 'inliers' if result.pr_score == 'inliers' else 'similarity'
        ax.step(np.r_[0.0, recall], np.r_[result.curve.precision[0], result.curve.precision],
                where='pre', label=f'{label} (AUC {auc:.3f}, over {score})')
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title('precision-recall: top-1 similarity, or inliers of verified loops',
                 fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc='lower left', fontsize=8)
    else:
        ax.text(0.5, 0.5, 'undefined: no true revisits', ha='center')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_similarity_matrix(path: str | os.PathLike, queries: np.ndarray, database: np.ndarray,
                           title: str) -> None:
    """Cosine similarity of every query to every map keyframe (subsampled when large)."""
    plt = _pyplot()
    q_step = max(1, -(-len(queries) // MAX_MATRIX_SIDE))
    m_step = max(1, -(-len(database) // MAX_MATRIX_SIDE))
    sim = (np.asarray(queries[::q_step], dtype=np.float32)
           @ np.asarray(database[::m_step], dtype=np.float32).T)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    image = ax.imshow(sim, cmap='viridis', aspect='auto', interpolation='nearest',
                      extent=(0, len(database), len(queries), 0))
    fig.colorbar(image, ax=ax, label='cosine similarity')
    ax.set_xlabel('map keyframe')
    ax.set_ylabel('query keyframe')
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_trajectory(path: str | os.PathLike, ground_truth: GroundTruth, result: EvalResult,
                    title: str) -> None:
    """Ground-truth paths with the accepted loop edges (green correct, red wrong)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    m_xy = ground_truth.map.xyz[:, :2]
    q_xy = ground_truth.queries.xyz[:, :2]
    ax.plot(m_xy[:, 0], m_xy[:, 1], '-', color='0.6', lw=1, label='map keyframes')
    if ground_truth.queries is not ground_truth.map:
        ax.plot(q_xy[:, 0], q_xy[:, 1], '-', color='tab:blue', lw=1, alpha=0.6,
                label='query keyframes')
    counts = {}
    for correct, colour, name in ((True, 'tab:green', 'true positive'),
                                  (False, 'tab:red', 'false positive')):
        keep = result.accepted_correct == correct
        counts[name] = int(keep.sum())
        if not keep.any():
            continue
        a = q_xy[result.accepted_query_rows[keep]]
        b = m_xy[result.accepted_map_rows[keep]]
        segments = np.stack([a, b], axis=1)
        for k, seg in enumerate(segments):
            ax.plot(seg[:, 0], seg[:, 1], '-', color=colour, lw=0.8, alpha=0.7,
                    label=f'{name} ({counts[name]})' if k == 0 else None)
    ax.set_aspect('equal', adjustable='datalim')
    ax.set_xlabel('x (m)')
    ax.set_ylabel('y (m)')
    ax.set_title(title, fontsize=9)
    ax.legend(loc='best', fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
