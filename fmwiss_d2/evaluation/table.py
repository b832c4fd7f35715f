"""A compact table of evaluation results (one row per dataset and task)."""
from typing import Dict

from tabulate import tabulate

# The headline metrics of each task, in the order they are shown.
_KEYS = {"sem_seg": ["mIoU", "mIoU_old", "mIoU_new", "IoU_background", "fwIoU", "mACC", "pACC"], "panoptic_seg": ["PQ", "SQ", "RQ", "PQ_th", "PQ_st"],
         "segm": ["AP", "AP50", "AP75"], "bbox": ["AP", "AP50", "AP75"]}


def format_metrics_table(results: Dict) -> str:
    """``results``: ``{dataset: {task: {metric: value}}}`` or ``{task: {metric: value}}`` (one dataset)."""
    if results and all(isinstance(v, dict) and not any(isinstance(x, dict) for x in v.values())
                       for v in results.values()):
        results = {"": results}
    rows = []
    for dataset, tasks in results.items():
        for task, metrics in tasks.items():
            keys = [k for k in _KEYS.get(task, sorted(metrics)) if k in metrics]
            rows.append([dataset, task, "  ".join(f"{k} {metrics[k]:.2f}" for k in keys)])
    return tabulate(rows, headers=["dataset", "task", "metrics"], tablefmt="github")
