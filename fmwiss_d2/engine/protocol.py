"""Protocols as ordered stages: each stage writes its outputs into its folder and is skipped once finished.

A stage is finished when its stamp ``<folder>/stage.json`` exists, names the same stage and key, and every
output it lists exists. The stamp is written (atomically) only after the stage's function returned, so an
interrupted stage runs again (and resumes from its own checkpoints). Examples: an incremental protocol (one
stage per step and method, step 0 shared), pseudo-label generation then training, PADing's three stages.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

from tabulate import tabulate

from ..utils.errors import UnknownNameError, UserError
from ..utils.io import atomic_open, atomic_write_json
from .checkpoint import is_loadable
from .lock import OutputDirLock

logger = logging.getLogger("fmwiss_d2.protocol")

STAMP = "stage.json"


@dataclass(eq=False)
class Stage:
    """One unit of a protocol. ``run()`` produces ``outputs`` (paths, relative to ``folder`` or absolute);
    ``key`` is what defines them (e.g. the options the stage is run with): a different key reruns the stage."""

    name: str
    folder: str
    run: Callable[[], object]
    outputs: Sequence[str] = ()
    key: Dict = field(default_factory=dict)

    def output_paths(self) -> List[str]:
        return [os.path.join(self.folder, p) for p in self.outputs]

    def stamp(self) -> dict:
        return {"stage": self.name, "key": json.loads(json.dumps(self.key, default=str))}

    def is_finished(self) -> bool:
        path = os.path.join(self.folder, STAMP)
        if not os.path.isfile(path):
            return False
        try:
            with open(path) as f:
                stamp = json.load(f)
        except (OSError, ValueError):
            return False
        same = {k: stamp.get(k) for k in ("stage", "key")} == self.stamp()
        paths = self.output_paths()
        if not same or not all(os.path.exists(p) for p in paths):
            return False
        damaged = [p for p in paths if p.endswith(".pth") and not is_loadable(p)]
        if damaged:
            logger.warning("stage %s: %s does not load (damaged): the stage runs again", self.name, damaged)
        return not damaged


def run_stages(stages: Sequence[Stage]) -> List[str]:
    """Runs the unfinished stages in order; returns, per stage, "ran" or "skipped"."""
    status = []
    for stage in stages:
        if stage.is_finished():
            logger.info("stage %s (%s) is finished: skipped", stage.name, stage.folder)
            status.append("skipped")
            continue
        logger.info("stage %s (%s): running", stage.name, stage.folder)
        start = time.time()
        stage.run()
        missing = [p for p in stage.output_paths() if not os.path.exists(p)]
        if missing:
            raise RuntimeError(f"stage {stage.name} finished without writing {missing}")
        atomic_write_json(os.path.join(stage.folder, STAMP),
                          {**stage.stamp(), "outputs": list(stage.outputs), "seconds": round(time.time() - start, 1)},
                          indent=1)
        status.append("ran")
    return status


def config_digest(path: str) -> str:
    """SHA-256 of a config file's text and of every ``_BASE_`` file it inherits, in order: editing any of them
    changes what a stage runs, so its key must change too (the path alone would reuse stale outputs)."""
    import hashlib

    import yaml

    digest, seen, todo = hashlib.sha256(), set(), [os.path.abspath(path)]
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.add(current)
        with open(current, "rb") as f:
            text = f.read()
        digest.update(current.encode() + b"\0" + text + b"\0")
        try:
            base = (yaml.safe_load(text) or {}).get("_BASE_")
        except yaml.YAMLError:  # a python tag (detectron2 allows them): its own text is still hashed
            base = None
        if isinstance(base, str) and not base.startswith(("http://", "https://")):
            todo.append(os.path.normpath(os.path.join(os.path.dirname(current), base)))
    return digest.hexdigest()[:16]


def stage_key(args, opts: Sequence[str]) -> dict:
    """What a protocol stage runs: the config file (path and content, with its bases) and every option it adds;
    a change of any of them reruns the stage."""
    return {"config": os.path.abspath(args.config_file), "config_digest": config_digest(args.config_file),
            "opts": list(args.opts) + list(opts)}


# ------------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One row of a comparison: the method it trains, the task transform it applies ("" = none) and its own
    config overrides (``opts``, a flat ``KEY VALUE`` list)."""

    name: str
    method: str
    transform: str = ""
    opts: tuple = ()


def parse_variants(specs: Sequence[str]) -> Dict[str, tuple]:
    """``PROTOCOL.VARIANTS`` entries ``"NAME: KEY VALUE ..."`` -> {NAME: (KEY, VALUE, ...)}. Why strings: a
    variant is a list of command-line overrides, written where the config that it varies is written."""
    out: Dict[str, tuple] = {}
    for spec in specs:
        name, sep, rest = str(spec).partition(":")
        name, words = name.strip(), tuple(rest.split())
        if not sep or not name or " " in name or len(words) % 2:
            raise UserError(f"PROTOCOL.VARIANTS entry {spec!r} is not 'NAME: KEY VALUE [KEY VALUE ...]' (a name "
                            "without spaces, a colon, then pairs of config keys and values)")
        if name in out:
            raise UserError(f"PROTOCOL.VARIANTS defines '{name}' twice; give each variant its own name")
        out[name] = words
    return out


def _override(opts: Sequence[str], key: str, default: str) -> str:
    values = [opts[i + 1] for i in range(0, len(opts), 2) if opts[i] == key]
    return values[-1] if values else default


def resolve_variant(name: str, cfg=None) -> Variant:
    """The :class:`Variant` of a ``--methods``/``--variants`` entry: a variant of ``cfg.PROTOCOL.VARIANTS``, a
    registered method, or a registered task transform with the method it trains with (e.g. "Joint" ->
    Finetune). Unknown names raise, listing all three."""
    from ..data.datasets.tasks import TASK_TRANSFORM_REGISTRY, get_task_transform
    from ..methods import METHOD_REGISTRY

    named = parse_variants(cfg.PROTOCOL.VARIANTS) if cfg is not None else {}
    if name in named and (name in METHOD_REGISTRY or name in TASK_TRANSFORM_REGISTRY):
        raise UserError(f"PROTOCOL.VARIANTS: '{name}' is already a method or task transform; rename the variant")
    if name in named:
        opts = named[name]
        method = _override(opts, "METHOD.NAME", cfg.METHOD.NAME)
        transform = _override(opts, "INCREMENTAL.TRANSFORM", "")
        for n, registry, key in ((method, METHOD_REGISTRY, "METHOD.NAME"),
                                 (transform, TASK_TRANSFORM_REGISTRY, "INCREMENTAL.TRANSFORM")):
            if n and n not in registry:
                raise UnknownNameError(f"PROTOCOL.VARIANTS '{name}': {key} '{n}' is not registered "
                                       f"({sorted(k for k, _ in registry)})")
        return Variant(name, method, transform, opts)
    if name in METHOD_REGISTRY:
        return Variant(name, name)
    if name in TASK_TRANSFORM_REGISTRY:
        return Variant(name, get_task_transform(name).method, name)
    raise UnknownNameError(f"'{name}' is neither a variant of PROTOCOL.VARIANTS ({sorted(named)}), a method "
                           f"({sorted(k for k, _ in METHOD_REGISTRY)}) nor a task transform "
                           f"({sorted(k for k, _ in TASK_TRANSFORM_REGISTRY)})")


# ------------------------------------------------------------------------------------ incremental protocol
def incremental_stages(args, cfg, variants: Sequence[str], train: Callable) -> List[tuple]:
    """``(variant, step, stage, {eval split: results file})`` for every step of every variant; step 0 is shared
    by the variants that train it the same way (the identity transform), so it runs once: a variant's own
    overrides apply from step 1 on."""
    from ..data.datasets.tasks import get_task_transform, resolve_task
    from ..evaluation.incremental import results_path

    task = resolve_task(cfg.INCREMENTAL.TASK)
    setting = cfg.INCREMENTAL.SETTING
    root = os.path.join(cfg.OUTPUT_DIR, f"{task.name}_{setting}")
    plan, shared = [], {}
    for variant in variants:
        v = resolve_variant(variant, cfg)
        transform = get_task_transform(v.transform)
        out_root = os.path.join(root, variant)
        for k in transform.steps(task):
            opts = ["INCREMENTAL.TASK", cfg.INCREMENTAL.TASK, "INCREMENTAL.STEP", str(k), "METHOD.NAME", v.method,
                    "INCREMENTAL.TRANSFORM", v.transform]
            if k == 0 and not v.transform:  # the base step: the same for every method and variant
                out = root
                opts[opts.index("METHOD.NAME") + 1] = "Finetune"
            else:
                out = out_root
                opts += list(v.opts)
                if k == 1 and not v.transform:
                    opts += ["INCREMENTAL.PREVIOUS_WEIGHTS", os.path.join(root, "step0", "model_final.pth")]
            folder = os.path.join(out, transform.folder(k))
            opts += ["OUTPUT_DIR", out]
            results = {split: results_path(os.path.join(folder, "inference"), task.dataset_name(setting, k, split))
                       for split, _ in task.steps[k].val}
            if folder not in shared:
                shared[folder] = Stage(f"{variant}/step{k}" if out != root else f"step{k}", folder,
                                       run=lambda o=opts, f=folder: train(args, o, f),
                                       outputs=["model_final.pth"] + [os.path.relpath(r, folder) for r in results.values()],
                                       key=stage_key(args, opts))
            plan.append((variant, k, shared[folder], results))
    return plan


def report_split(splits: Sequence[str]) -> str:
    """The evaluation split a protocol's comparison reports: the held-out "test" when the task has one (recipes
    are chosen on val), else the first."""
    return "test" if "test" in splits else list(splits)[0]


def train_step(args, opts, folder: str) -> None:
    """Trains one step (writing into ``folder``) through :func:`fmwiss_d2.engine.launch.main` in
    ``args.num_gpus`` processes; resumes when the folder holds an interrupted run's checkpoint."""
    from detectron2.engine import launch

    from .launch import main

    step_args = copy.copy(args)
    step_args.opts = list(args.opts) + list(opts)
    step_args.resume = args.resume or os.path.isfile(os.path.join(folder, "last_checkpoint"))
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(step_args,))


def run_incremental(args, methods: Sequence[str] = (), train: Callable = train_step) -> dict:
    """Every step of ``INCREMENTAL.TASK`` for each of ``methods`` (default ``METHOD.NAME``), then the comparison
    (``summary.{json,csv,png}`` in ``OUTPUT_DIR/<task>_<setting>``, and a table on stdout). Every name is checked
    before anything trains."""
    from ..data.datasets.tasks import resolve_task
    from ..evaluation.incremental import forgetting, plot_steps, write_summary
    from .launch import load_config

    cfg = load_config(args.config_file, args.opts)
    if not cfg.INCREMENTAL.TASK:
        raise UserError("an incremental protocol needs INCREMENTAL.TASK (in the config file or as "
                         "'INCREMENTAL.TASK name')")
    variants = list(methods) or [cfg.METHOD.NAME]
    for v in variants:
        resolve_variant(v, cfg)
    task = resolve_task(cfg.INCREMENTAL.TASK)
    setting = cfg.INCREMENTAL.SETTING
    root = os.path.join(cfg.OUTPUT_DIR, f"{task.name}_{setting}")
    plan = incremental_stages(args, cfg, variants, train)
    with OutputDirLock(root):  # one protocol per folder
        run_stages(list(dict.fromkeys(stage for _, _, stage, _ in plan)))
    all_rows, per_class = [], {}
    split = report_split([s for s, _ in task.steps[-1].val])
    for variant, k, _, results in plan:
        for eval_split, result in results.items():
            with open(result) as f:
                res = json.load(f)
            m = res["metrics"]
            all_rows.append({"method": variant, "step": k, "split": eval_split, "dataset": res.get("dataset"),
                             **{key: m.get(key) for key in ("mIoU_old", "mIoU_new", "mIoU_all", "IoU_background")}})
            if eval_split == split:
                per_class.setdefault(variant, []).append(
                    {c: m.get(f"IoU-{c}") for c in res["classes"] if m.get(f"IoU-{c}") is not None})
    rows = [r for r in all_rows if r["split"] == split]
    summary = {"task": task.name, "setting": setting, "split": split, "steps": rows, "all_splits": all_rows,
               "forgetting": {v: forgetting(steps) for v, steps in per_class.items()}}
    atomic_write_json(os.path.join(root, "summary.json"), summary, indent=1, default=lambda x: None)
    write_summary(all_rows, os.path.join(root, "summary.csv"))
    plot_steps(rows, os.path.join(root, "summary.png"), title=f"{task.name} ({setting}, {split})")
    last = task.num_steps - 1
    fmt = lambda v: "-" if v is None or v != v else f"{v:.1f}"  # noqa: E731
    table = tabulate([[r["method"], r["split"], fmt(r["mIoU_old"]), fmt(r["mIoU_new"]), fmt(r["mIoU_all"]),
                       fmt(r["IoU_background"])] for r in all_rows if r["step"] == last],
                     headers=["method", "split", "old (1..base)", "new", "all", "background"], tablefmt="github")
    print(f"\n{task.name} ({setting}), after the last step (mIoU %; recipes chosen on val, reported on "
          f"{split}):\n{table}\n\nWritten to {root}/summary.{{csv,json,png}}")
    return summary


# ---------------------------------------------------------------------------------- comparison of variants
def _metric(results: dict, dataset: str, path: str):
    node = results.get(dataset, {})
    for part in path.split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def run_variants(args, names: Sequence[str], train: Callable = train_step) -> dict:
    """Trains and evaluates each variant (a method or a ``PROTOCOL.VARIANTS`` entry) as a stage in
    ``OUTPUT_DIR/<variant>`` (finished ones skipped), then compares them on every ``DATASETS.TEST`` dataset:
    ``PROTOCOL.METRICS`` columns, printed and written to ``OUTPUT_DIR/summary.{json,csv}``. For runs without an
    incremental task (DuPL's ablations, a supervised reference); tasks go through :func:`run_incremental`."""
    from .launch import load_config
    from .trainer import RESULTS_FILE

    cfg = load_config(args.config_file, args.opts)
    if cfg.INCREMENTAL.TASK:
        raise UserError(f"tools/run_variants.py compares runs without a task, but INCREMENTAL.TASK is "
                        f"'{cfg.INCREMENTAL.TASK}'; use tools/run_incremental.py for incremental tasks")
    if not cfg.DATASETS.TEST:
        raise UserError("a comparison needs evaluation datasets: DATASETS.TEST is empty")
    variants = [resolve_variant(n, cfg) for n in (list(names) or [cfg.METHOD.NAME])]
    for v in variants:
        if v.transform:
            raise UserError(f"variant '{v.name}' applies the task transform '{v.transform}', which needs "
                            "INCREMENTAL.TASK; use tools/run_incremental.py")
    stages = []
    for v in variants:
        folder = os.path.join(cfg.OUTPUT_DIR, v.name)
        opts = ["METHOD.NAME", v.method, *v.opts, "OUTPUT_DIR", folder]
        stages.append(Stage(v.name, folder, run=lambda o=opts, f=folder: train(args, o, f),
                            outputs=["model_final.pth", RESULTS_FILE], key=stage_key(args, opts)))
    with OutputDirLock(cfg.OUTPUT_DIR):
        run_stages(stages)
    return write_comparison(cfg, args.config_file, [(v.name, stage.folder) for v, stage in zip(variants, stages)])


def write_comparison(cfg, config_file: str, runs: Sequence[tuple]) -> dict:
    """The ``PROTOCOL.METRICS`` of every ``(name, folder)`` run on every ``DATASETS.TEST`` dataset, read from the
    runs' results files: printed, and written to ``OUTPUT_DIR/summary.{json,csv}``."""
    from .trainer import results_file

    metrics = list(cfg.PROTOCOL.METRICS)
    rows = []
    for name, folder in runs:
        with open(results_file(folder)) as f:
            res = json.load(f)
        for dataset in cfg.DATASETS.TEST:
            rows.append({"variant": name, "dataset": dataset, **{m: _metric(res, dataset, m) for m in metrics}})
    summary = {"config": config_file, "metrics": metrics, "rows": rows}
    atomic_write_json(os.path.join(cfg.OUTPUT_DIR, "summary.json"), summary, indent=1, default=lambda x: None)
    with atomic_open(os.path.join(cfg.OUTPUT_DIR, "summary.csv"), "w") as f:
        f.write(",".join(["variant", "dataset", *metrics]) + "\n")
        for r in rows:
            f.write(",".join(str("" if r[k] is None else r[k]) for k in ["variant", "dataset", *metrics]) + "\n")
    fmt = lambda x: "-" if x is None or x != x else f"{x:.1f}"  # noqa: E731
    table = tabulate([[r["variant"], r["dataset"], *[fmt(r[m]) for m in metrics]] for r in rows],
                     headers=["variant", "dataset", *metrics], tablefmt="github", disable_numparse=True)
    print(f"\n{table}\n\nWritten to {cfg.OUTPUT_DIR}/summary.{{csv,json}}")
    return summary


# ------------------------------------------------------------------------------------------ zero-shot (PADing)
def zero_shot_stages(args, cfg, variants: Sequence[str], train: Callable) -> List[tuple]:
    """``(variant, [stages], folder evaluated)`` for PADing's protocol: stage 1 ("seen") once in
    ``OUTPUT_DIR/stage1``, shared by every variant (a variant's own overrides apply from the generator stage on);
    then per variant ``OUTPUT_DIR/<variant>/generator`` (no evaluation: the class head is stage 1's) and
    ``.../classifier``, evaluated. A variant that sets ``METHOD.PADING.STAGE seen`` is stage 1 alone."""
    from .trainer import RESULTS_FILE

    c = cfg.METHOD.PADING

    def later(opts, stage: str):
        """The generator or classifier stage's schedule: METHOD.PADING.STAGE_{MAX_ITER,BASE_LR} (the generator's
        rate GENERATOR_BASE_LR when set), the variant's own when it sets them."""
        iters = float(_override(opts, "METHOD.PADING.STAGE_MAX_ITER", str(c.STAGE_MAX_ITER)))
        lr = float(_override(opts, "METHOD.PADING.STAGE_BASE_LR", str(c.STAGE_BASE_LR)))
        if stage == "generator":
            lr = float(_override(opts, "METHOD.PADING.GENERATOR_BASE_LR", str(c.GENERATOR_BASE_LR))) or lr
        return (["SOLVER.MAX_ITER", str(int(iters))] if iters > 0 else []) + \
            (["SOLVER.BASE_LR", str(lr)] if lr > 0 else [])

    first = os.path.join(cfg.OUTPUT_DIR, "stage1")
    opts1 = ["METHOD.NAME", "PADing", "METHOD.PADING.STAGE", "seen", "OUTPUT_DIR", first]
    stage1 = Stage("stage1", first, run=lambda: train(args, opts1, first), key=stage_key(args, opts1),
                   outputs=["model_final.pth", RESULTS_FILE])
    weights1 = os.path.join(first, "model_final.pth")
    plan = []
    for name in variants:
        v = resolve_variant(name, cfg)
        if v.method != "PADing":
            raise UserError(f"variant '{name}' trains METHOD.NAME '{v.method}'; tools/run_zero_shot.py runs PADing's "
                            "stages (use tools/run_variants.py for other methods)")
        if _override(v.opts, "METHOD.PADING.STAGE", "") == "seen":
            plan.append((name, [stage1], first))
            continue
        gen, clf = (os.path.join(cfg.OUTPUT_DIR, name, s) for s in ("generator", "classifier"))
        opts_g = [*v.opts, *later(v.opts, "generator"), "METHOD.NAME", "PADing", "METHOD.PADING.STAGE", "generator",
                  "MODEL.WEIGHTS", weights1, "DATASETS.TEST", "()", "OUTPUT_DIR", gen]
        weights_g = os.path.join(gen, "model_final.pth")
        opts_c = [*v.opts, *later(v.opts, "classifier"), "METHOD.NAME", "PADing", "METHOD.PADING.STAGE", "classifier",
                  "MODEL.WEIGHTS", weights_g, "METHOD.PADING.GENERATOR_WEIGHTS", weights_g, "OUTPUT_DIR", clf]
        plan.append((name, [stage1,
                            Stage(f"{name}/generator", gen, run=lambda o=opts_g, f=gen: train(args, o, f),
                                  outputs=["model_final.pth"], key=stage_key(args, opts_g)),
                            Stage(f"{name}/classifier", clf, run=lambda o=opts_c, f=clf: train(args, o, f),
                                  outputs=["model_final.pth", RESULTS_FILE],
                                  key=stage_key(args, opts_c))], clf))
    return plan


def run_zero_shot(args, variants: Sequence[str] = (), train: Callable = train_step) -> dict:
    """PADing's stages (stage 1 -> generator -> classifier) for each variant (default ``METHOD.NAME``), finished
    stages skipped, then the comparison of :func:`write_comparison` (seen / unseen / harmonic-mean metrics)."""
    from .launch import load_config

    cfg = load_config(args.config_file, args.opts)
    if not cfg.DATASETS.TEST:
        raise UserError("a comparison needs evaluation datasets: DATASETS.TEST is empty")
    plan = zero_shot_stages(args, cfg, list(variants) or [cfg.METHOD.NAME], train)
    with OutputDirLock(cfg.OUTPUT_DIR):
        run_stages(list(dict.fromkeys(s for _, stages, _ in plan for s in stages)))
    return write_comparison(cfg, args.config_file, [(name, folder) for name, _, folder in plan])
