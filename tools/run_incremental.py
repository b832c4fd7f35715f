#!/usr/bin/env python
"""Runs every step of an incremental task for one or more methods, then compares them.

    python tools/run_incremental.py --config-file configs/shapes/incremental/deeplabv3_6-4.yaml
    python tools/run_incremental.py --config-file CFG --methods MiB,Finetune,Joint   # several methods
    python tools/run_incremental.py --config-file CFG --resume --num-gpus 2 SOLVER.IMS_PER_BATCH 16

Each step is an ordinary ``tools/train_net.py`` training (so --resume, --num-gpus and --eval-only work per
step) written to ``OUTPUT_DIR/<task>_<setting>/<method>/step<k>``; a step whose final model and results
exist is skipped. Step 0 learns the base classes the same way for every method, so it is trained once, in
``OUTPUT_DIR/<task>_<setting>/step0``, and shared. "Joint" trains every class at once (the upper bound) and
is evaluated like the last step.
The comparison is written to ``OUTPUT_DIR/<task>_<setting>/summary.{csv,json,png}`` and printed.
"""
import argparse
import copy
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/ (for train_net)

from tabulate import tabulate  # noqa: E402

import train_net  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import launch  # noqa: E402
from fmwiss_d2 import add_fmwiss_config  # noqa: E402
from fmwiss_d2.data.datasets.tasks import resolve_task  # noqa: E402
from fmwiss_d2.engine.incremental import JOINT  # noqa: E402
from fmwiss_d2.evaluation.incremental import forgetting, plot_steps, results_path, write_summary  # noqa: E402
from fmwiss_d2.utils.io import atomic_write_json  # noqa: E402

logger = logging.getLogger("fmwiss_d2.run_incremental")


def parse_args(argv=None):
    parser = train_net.default_argument_parser()
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--methods", default="",
                        help="comma-separated methods (METHOD_REGISTRY names or Joint), e.g. MiB,Finetune,Joint; "
                             "default: INCREMENTAL.METHOD")
    return parser.parse_args(argv)


def load_cfg(args):
    cfg = get_cfg()
    add_fmwiss_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not cfg.INCREMENTAL.TASK:
        sys.exit("run_incremental.py needs INCREMENTAL.TASK (in the config file or as 'INCREMENTAL.TASK name').")
    return cfg


def step_results_path(step_dir: str, dataset: str) -> str:
    return results_path(os.path.join(step_dir, "inference"), dataset)


def run_step(args, opts, step_dir: str, dataset: str):
    """Trains (or resumes) one step unless its final model and results already exist."""
    if os.path.isfile(os.path.join(step_dir, "model_final.pth")) and os.path.isfile(step_results_path(step_dir, dataset)):
        logger.info("%s is finished: skipped", step_dir)
        return
    step_args = copy.copy(args)
    step_args.opts = list(args.opts) + opts
    step_args.resume = args.resume or os.path.isfile(os.path.join(step_dir, "last_checkpoint"))
    launch(train_net.main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(step_args,))


def main(argv=None):
    args = parse_args(argv)
    cfg = load_cfg(args)
    task = resolve_task(cfg.INCREMENTAL.TASK)
    setting = cfg.INCREMENTAL.SETTING
    methods = [m for m in args.methods.split(",") if m] or [cfg.INCREMENTAL.METHOD]
    root = os.path.join(cfg.OUTPUT_DIR, f"{task.name}_{setting}")
    last = task.num_steps - 1
    rows, per_class = [], {}
    for method in methods:
        method_root = os.path.join(root, method)
        steps = [last] if method == JOINT else range(task.num_steps)
        for k in steps:
            dataset = task.dataset_name(setting, k, task.steps[k].val[0][0])
            opts = ["INCREMENTAL.TASK", cfg.INCREMENTAL.TASK, "INCREMENTAL.STEP", str(k), "INCREMENTAL.METHOD", method]
            if method == JOINT:
                step_dir, opts = os.path.join(method_root, "joint"), opts + ["OUTPUT_DIR", method_root]
            elif k == 0:  # shared by every method
                step_dir, opts = os.path.join(root, "step0"), opts + ["OUTPUT_DIR", root]
            else:
                step_dir, opts = os.path.join(method_root, f"step{k}"), opts + ["OUTPUT_DIR", method_root]
                if k == 1:
                    opts += ["INCREMENTAL.PREVIOUS_WEIGHTS", os.path.join(root, "step0", "model_final.pth")]
            run_step(args, opts, step_dir, dataset)
            with open(step_results_path(step_dir, dataset)) as f:
                res = json.load(f)
            m = res["metrics"]
            rows.append({"method": method, "step": k, **{key: m.get(key) for key in
                                                          ("mIoU_old", "mIoU_new", "mIoU_all", "IoU_background")}})
            per_class.setdefault(method, []).append(
                {c: m.get(f"IoU-{c}") for c in res["classes"] if m.get(f"IoU-{c}") is not None})
    summary = {
        "task": task.name, "setting": setting, "steps": rows,
        "forgetting": {meth: forgetting(steps) for meth, steps in per_class.items()},
    }
    atomic_write_json(os.path.join(root, "summary.json"), summary, indent=1, default=lambda x: None)
    write_summary(rows, os.path.join(root, "summary.csv"))
    plot_steps(rows, os.path.join(root, "summary.png"), title=f"{task.name} ({setting})")
    final = [r for r in rows if r["step"] == last]
    fmt = lambda v: "-" if v is None or v != v else f"{v:.1f}"  # noqa: E731
    table = tabulate([[r["method"], fmt(r["mIoU_old"]), fmt(r["mIoU_new"]), fmt(r["mIoU_all"]),
                       fmt(r["IoU_background"])] for r in final],
                     headers=["method", "old (1..base)", "new", "all", "background"], tablefmt="github")
    print(f"\n{task.name} ({setting}), after the last step (mIoU %):\n{table}\n\nWritten to {root}/summary.{{csv,json,png}}")
    return summary


if __name__ == "__main__":
    main()
