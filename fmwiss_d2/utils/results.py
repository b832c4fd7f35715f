"""Regenerable results tables: every number in the README comes from a command that anyone can run again.

A :class:`Table` is plain data: the commands one seed runs (the repository's own CLI tools), the file its
numbers are read from and how (a reader of :data:`READERS`), the seeds, and the published numbers it is shown
beside. :func:`run_table` runs the seeds that have no result yet (each in its own output folder, its commands'
output logged there), and :func:`write_table` writes ``results/<table>.json`` atomically with the commit, the
exact commands, per-seed numbers, mean ± std, threads and wall times; :func:`render_markdown` turns that file
into the README's table and :func:`replace_block` puts it between ``<!-- results:<table> -->`` and
``<!-- /results:<table> -->``. ``tools/reproduce.py`` is the command line; ``make results`` runs every table.

Placeholders in a command: ``{python}`` (the running interpreter), ``{seed}`` and ``{out}`` (the seed's output
folder). A seed is finished when its ``result.json`` exists (written after every command succeeded and its
numbers were read); ``force`` deletes the seed's folder and runs it again.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .io import atomic_write_json

__all__ = ["Table", "TABLES", "READERS", "register_table", "run_table", "run_seed", "finished_records", "summarize",
           "write_table", "render_markdown", "table_markdown", "replace_block", "update_readme", "git_state",
           "ResultsError", "shell_command"]

SEED_RESULT = "result.json"  # per seed, in its output folder: written last, so its presence means "finished"


class ResultsError(RuntimeError):
    """A seed's command failed, its result file is missing or lacks a metric, or a README block is absent."""


@dataclass(frozen=True)
class Table:
    """One results table, as data.

    Attributes:
        name: the key (``tools/reproduce.py NAME``, ``results/NAME.json``, the README markers).
        title: one line saying what is measured, on which split.
        commands: argv templates run in order for each seed (placeholders: module docstring).
        reader: a key of :data:`READERS`, reading ``result_file`` into ``{key: value}``.
        result_file: the file the numbers are read from, relative to the seed's output folder.
        metrics: ``(column, key)`` pairs: which reader keys are shown, under which column name, in order.
        seeds: the seeds run.
        paper: published numbers by column (``/work``'s ANCHORS.md), absent where there is none.
        paper_source: what the published numbers measure (model, dataset, split): never the synthetic world.
        digits: decimals shown in Markdown.
        notes: caveats shown under the table.
    """

    name: str
    title: str
    commands: tuple[tuple[str, ...], ...]
    reader: str
    result_file: str
    metrics: tuple[tuple[str, str], ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    paper: Mapping[str, float] = field(default_factory=dict)
    paper_source: str = ""
    digits: int = 1
    notes: str = ""

    def argv(self, seed: int, out: str, overrides: Sequence[str] = ()) -> list[list[str]]:
        """The exact commands of ``seed`` (placeholders filled in); ``overrides`` (config ``KEY VALUE`` pairs) are
        appended to the commands of the tools that take them (:data:`CONFIG_TOOLS`)."""
        values = {"{python}": sys.executable, "{seed}": str(seed), "{out}": out}

        def fill(part: str) -> str:  # plain replacement: a command may hold other braces (python -c code)
            for k, v in values.items():
                part = part.replace(k, v)
            return part

        return [[fill(part) for part in command] + (list(overrides) if takes_overrides(command) else [])
                for command in self.commands]

    @property
    def takes_overrides(self) -> bool:
        """Whether every command of the table takes config overrides (it can run on, e.g., a tiny world)."""
        return all(takes_overrides(c) for c in self.commands)


CONFIG_TOOLS = ("tools/train_net.py", "tools/run_incremental.py", "tools/run_variants.py")  # tools whose trailing words are config overrides


def takes_overrides(command: Sequence[str]) -> bool:
    return len(command) > 1 and command[1] in CONFIG_TOOLS


# ------------------------------------------------------------------------------------------------- readers
def _read_detectron2_metrics(path: str) -> dict:
    """detectron2's ``metrics.json`` (one JSON object per line): the last value of every key."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                out.update(json.loads(line))
    return out


def _flatten(obj, prefix: str = "") -> dict:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out = {}
    for k, v in obj.items():
        out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def _read_json(path: str) -> dict:
    """A JSON object; nested keys joined with ``/``."""
    with open(path) as f:
        return _flatten(json.load(f))


def _read_last_json_line(path: str) -> dict:
    """The last line of a log that is a JSON object (what the bench tools print); nested keys joined with ``/``."""
    with open(path) as f:
        for line in reversed(f.read().splitlines()):
            if line.startswith("{"):
                try:
                    return _flatten(json.loads(line))
                except json.JSONDecodeError:
                    continue
    raise ResultsError(f"no JSON line in {path}")


def _read_incremental_summary(path: str) -> dict:
    """``tools/run_incremental.py``'s ``summary.json``: ``{method}/{column}`` after the last step of the task, on
    the split it reports (the held-out test split where the task has one)."""
    with open(path) as f:
        summary = json.load(f)
    last = max(row["step"] for row in summary["steps"])
    return {f"{row['method']}/{k}": v for row in summary["steps"] if row["step"] == last
            for k, v in row.items() if k not in ("method", "step", "split", "dataset")}


def _read_variants_summary(path: str) -> dict:
    """``tools/run_variants.py``'s ``summary.json``: ``{variant}/{dataset}/{metric}`` for every row, and every
    variant as a percentage of every other on the same dataset and metric, ``{a} % of {b}/{dataset}/{metric}``
    (e.g. a weakly supervised method against its fully supervised reference)."""
    with open(path) as f:
        summary = json.load(f)
    values = {}
    for row in summary["rows"]:
        for metric in summary["metrics"]:
            if row.get(metric) is not None:
                values[(row["variant"], row["dataset"], metric)] = float(row[metric])
    out = {f"{v}/{d}/{m}": x for (v, d, m), x in values.items()}
    for (a, d, m), x in values.items():
        for (b, d2, m2), y in values.items():
            if a != b and (d, m) == (d2, m2) and y:
                out[f"{a} % of {b}/{d}/{m}"] = 100.0 * x / y
    return out


def _read_json_folder(path: str) -> dict:
    """Every ``*.json`` of a folder (e.g. ``tools/generate_pseudo_labels.py``'s results, one file per source),
    keyed ``{file stem}/{nested key}``."""
    if not os.path.isdir(path):
        raise ResultsError(f"{path} is not a folder of JSON files")
    return {f"{name[:-5]}/{k}": v for name in sorted(os.listdir(path)) if name.endswith(".json")
            for k, v in _read_json(os.path.join(path, name)).items()}


READERS: dict[str, Callable[[str], dict]] = {
    "detectron2_metrics": _read_detectron2_metrics,
    "json": _read_json,
    "last_json_line": _read_last_json_line,
    "incremental_summary": _read_incremental_summary,
    "variants_summary": _read_variants_summary,
    "json_folder": _read_json_folder,
}


# ------------------------------------------------------------------------------------------------- running
def git_state(cwd: str) -> dict:
    """``{"commit": HEAD, "dirty": tracked files differ from HEAD}``; ``None``s outside a git checkout. The tables'
    own files under ``results/`` do not count: seeds run side by side, and one may start after another has written
    its table."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _read_metrics(table: Table, out: str) -> dict:
    path = os.path.join(out, table.result_file)
    if not os.path.exists(path):
        raise ResultsError(f"{table.name}: the commands succeeded but wrote no {path}")
    values = READERS[table.reader](path)
    missing = [key for _, key in table.metrics if key not in values]
    if missing:
        raise ResultsError(f"{table.name}: {path} lacks {missing} (has {sorted(values)[:20]})")
    return {column: values[key] for column, key in table.metrics}


def run_seed(table: Table, seed: int, root: str, *, cwd: str, force: bool = False, log=print,
             overrides: Sequence[str] = ()) -> dict:
    """Runs one seed unless its ``result.json`` exists (``force``: its folder is deleted and it runs again).
    Returns that record: seed, metrics, commands, wall time, commit, threads."""
    out = os.path.abspath(os.path.join(root, table.name, f"seed{seed}"))
    done = os.path.join(out, SEED_RESULT)
    if os.path.isfile(done) and not force:
        log(f"[{table.name}] seed {seed}: finished before ({done}), skipped")
        with open(done) as f:
            return json.load(f)
    if force and os.path.isdir(out):
        shutil.rmtree(out)  # the tools resume or skip what they find: a forced run starts from nothing
    os.makedirs(out, exist_ok=True)
    commands = table.argv(seed, out, overrides)
    state = git_state(cwd)  # the code the commands run: an edit while they run does not change what they ran
    t0 = time.time()
    for k, argv in enumerate(commands):
        log_path = os.path.join(out, f"command{k}.log")
        log(f"[{table.name}] seed {seed}: {shell_command(argv)}  (log: {log_path})")
        with open(log_path, "w") as f:
            proc = subprocess.run(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            with open(log_path) as f:
                tail = "".join(f.readlines()[-15:])
            raise ResultsError(f"{table.name}: seed {seed}: command {k} exited with {proc.returncode}: "
                               f"{shell_command(argv)}\n--- last lines of {log_path}:\n{tail}")
    record = {"seed": seed, "metrics": _read_metrics(table, out), "commands": commands,
              "wall_s": round(time.time() - t0, 1), **state, "threads": _threads(),
              "output_dir": out}
    atomic_write_json(done, record, indent=1)
    return record


def run_table(table: Table, root: str, *, cwd: str, seeds: Sequence[int] | None = None, force: bool = False,
              log=print, overrides: Sequence[str] = ()) -> list[dict]:
    """Runs (or reuses) ``seeds`` (default: every seed of ``table``); returns the records of all the table's
    finished seeds, in seed order, so that rerunning one seed keeps the others in the table."""
    for s in seeds or table.seeds:
        run_seed(table, s, root, cwd=cwd, force=force, log=log, overrides=overrides)
    return finished_records(table, root)


def finished_records(table: Table, root: str) -> list[dict]:
    """The ``result.json`` records of the table's seeds that have one."""
    records = []
    for s in table.seeds:
        path = os.path.join(root, table.name, f"seed{s}", SEED_RESULT)
        if os.path.isfile(path):
            with open(path) as f:
                records.append(json.load(f))
    return records


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _table_state(records: Sequence[dict], cwd: str) -> dict:
    """The table's commit: its seeds' when they all ran from one, "dirty" when any of them ran from uncommitted
    changes. Seeds from different commits: the checkout's HEAD, marked dirty (``seed_commits`` lists them)."""
    commits = {r.get("commit") for r in records}
    if commits == {None}:  # run outside a git checkout
        return {"commit": None, "dirty": None}
    if len(commits) == 1:
        return {"commit": commits.pop(), "dirty": any(bool(r.get("dirty")) for r in records)}
    return {"commit": git_state(cwd)["commit"], "dirty": True}


def summarize(table: Table, records: Sequence[dict], *, cwd: str) -> dict:
    """The ``results/<table>.json`` content for ``records`` (one per seed)."""
    records = sorted(records, key=lambda r: r["seed"])
    columns = [c for c, _ in table.metrics]
    mean, std = {}, {}
    for c in columns:
        values = [r["metrics"][c] for r in records if r["metrics"].get(c) is not None]
        if values:
            mean[c], std[c] = _mean_std(values)
    return {
        "table": table.name,
        "title": table.title,
        **_table_state(records, cwd),
        "seed_commits": {str(r["seed"]): r.get("commit") for r in records},
        "commands": [list(c) for c in table.commands],
        "seeds": [r["seed"] for r in records],
        "per_seed": {str(r["seed"]): r["metrics"] for r in records},
        "mean": mean,
        "std": std,
        "paper": dict(table.paper),
        "paper_source": table.paper_source,
        "threads": {str(r["seed"]): r.get("threads") for r in records},
        "wall_s": {str(r["seed"]): r.get("wall_s") for r in records},
        "notes": table.notes,
        "digits": table.digits,
    }


def write_table(table: Table, records: Sequence[dict], results_dir: str, *, cwd: str) -> str:
    """Writes ``results_dir/<table>.json`` atomically; returns its path."""
    path = os.path.join(results_dir, f"{table.name}.json")
    atomic_write_json(path, summarize(table, records, cwd=cwd), indent=1)
    return path


# ------------------------------------------------------------------------------------------------ Markdown
def _fmt(v, digits: int) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def shell_command(argv: Sequence[str]) -> str:
    """A command line that can be pasted into a shell (placeholders such as ``{seed}`` left readable)."""
    return " ".join(a if re.fullmatch(r"[\w@%+=:,./{}-]+", a) else shlex.quote(a) for a in argv)


# Tables whose columns are all "<row> <part>" read better as one row per method or variant: (the parts, in column
# order; the part whose per-seed numbers the row shows). Incremental tables, then zero-shot ones.
ROW_LAYOUTS = ((("old", "new", "all"), "all"),
               (("mIoU seen", "mIoU unseen", "hIoU", "PQ seen", "PQ unseen", "PQ HM"), "mIoU unseen"))


def _grouped_rows(columns, parts: Sequence[str]) -> dict | None:
    """``{row: {part: column}}`` when every column is "<row> <part>" with a part of ``parts`` (and some row has
    two parts or more), else None."""
    rows: dict = {}
    for column in columns:
        part = next((p for p in parts if column.endswith(f" {p}") and len(column) > len(p) + 1), None)
        if part is None:
            return None
        rows.setdefault(column[: -len(part) - 1], {})[part] = column
    return rows if any(len(found) > 1 for found in rows.values()) else None


def render_markdown(result: dict) -> str:
    """The table of a ``results/<table>.json``: ours (mean ± std and per seed) beside the paper. One row per
    metric; for a table of a :data:`ROW_LAYOUTS` layout (e.g. columns "<method> old|new|all") one row per method,
    with the per-seed numbers of one part (the others are in the file)."""
    seeds, digits = result["seeds"], result["digits"]
    over = f"mean ± std over seeds {', '.join(map(str, seeds))}"
    ours = lambda c: f"{_fmt(result['mean'][c], digits)} ± {_fmt(result['std'][c], digits)}"  # noqa: E731
    per_seed = lambda c: ", ".join(_fmt(result["per_seed"][str(s)].get(c), digits) for s in seeds)  # noqa: E731
    layout = next(((parts, shown, rows) for parts, shown in ROW_LAYOUTS
                   if (rows := _grouped_rows(result["mean"], parts))), None)
    if layout:
        parts, shown, rows = layout
        lines = [f"| method | {parts[0]}: {over} | {' | '.join(parts[1:])} | {shown}, per seed | "
                 f"paper: {' / '.join(parts)} |", "|---" * (len(parts) + 3) + "|"]
        for method, found in rows.items():
            cells = [ours(found[p]) if p in found else "-" for p in parts]
            paper = [result["paper"].get(found[p]) if p in found else None for p in parts]
            paper_cell = " / ".join(_fmt(v, digits) for v in paper) if any(v is not None for v in paper) else "-"
            seeds_cell = per_seed(found[shown]) if shown in found else "-"
            lines.append(f"| {method} | {' | '.join(cells)} | {seeds_cell} | {paper_cell} |")
    else:
        lines = [f"| metric | ours: {over} | per seed | paper |", "|---|---|---|---|"]
        for column in result["mean"]:
            lines.append(f"| {column} | {ours(column)} | {per_seed(column)} | "
                         f"{_fmt(result['paper'].get(column), digits)} |")
    commit = (result["commit"] or "unknown")[:7] + (" (uncommitted changes)" if result["dirty"] else "")
    walls = ", ".join(f"{_fmt(result['wall_s'][str(s)], 0)} s" for s in seeds)
    threads = sorted({t for t in result["threads"].values() if t is not None})
    lines += [
        "",
        f"{result['title']}. Commit {commit}; {', '.join(map(str, threads))} thread(s); wall time per seed {walls}.",
        "Commands (per seed): " + "; ".join(f"`{shell_command(c)}`" for c in result["commands"]) + ".",
    ]
    if result["paper_source"]:
        lines.append(f"Paper: {result['paper_source']}.")
    if result["notes"]:
        lines.append(result["notes"])
    return "\n".join(lines) + "\n"


def table_markdown(name: str, results_dir: str) -> str:
    """:func:`render_markdown` of ``results_dir/<name>.json``."""
    path = os.path.join(results_dir, f"{name}.json")
    if not os.path.isfile(path):
        raise ResultsError(f"no {path}: run `python tools/reproduce.py {name}` first")
    with open(path) as f:
        return render_markdown(json.load(f))


def update_readme(readme: str, name: str, block: str) -> None:
    """Replaces the table's block in the file ``readme`` (see :func:`replace_block`), atomically."""
    from .io import atomic_open

    with open(readme) as f:
        text = replace_block(f.read(), name, block)
    with atomic_open(readme) as f:
        f.write(text)


def replace_block(text: str, name: str, block: str) -> str:
    """``text`` with the lines between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` replaced by
    ``block`` (markers kept). Raises :class:`ResultsError` when the markers are not there exactly once."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ResultsError(f"README needs exactly one '{start}' ... '{end}' block (in that order) for table {name}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block.rstrip()}\n{end}{tail}"


# ------------------------------------------------------------------------------------------------- tables
TABLES: dict[str, Table] = {}


def register_table(table: Table) -> Table:
    if table.name in TABLES:
        raise ValueError(f"results table {table.name!r} is already registered")
    TABLES[table.name] = table
    return table


_TRAIN = ("{python}", "tools/train_net.py")
_INCREMENTAL = ("{python}", "tools/run_incremental.py")
_MIB_PAPER = "MiB (CVPR 2020), DeepLabV3 ResNet-101, Pascal VOC 2012, {task} overlapped (paper Table 1); not the synthetic world"
_INCREMENTAL_METRICS = (
    ("MiB old", "MiB/mIoU_old"), ("MiB new", "MiB/mIoU_new"), ("MiB all", "MiB/mIoU_all"),
    ("Finetune old", "Finetune/mIoU_old"), ("Finetune new", "Finetune/mIoU_new"), ("Finetune all", "Finetune/mIoU_all"),
    ("Joint all", "Joint/mIoU_all"),
)
_INCREMENTAL_NOTE = ("After the last step, on the task's test step dataset (built on `shapes_sem_seg_test`); the val "
                     "figures, where recipes are chosen, are in each run's summary.json (`all_splits`).")


def _incremental(name: str, config: str, task: str, paper_task: str, paper: dict) -> Table:
    return Table(
        name=name,
        title=f"MiB vs fine-tuning vs joint training, task {task} (overlap), mIoU % old / new / all ({config})",
        commands=(_INCREMENTAL + ("--config-file", config, "--methods", "MiB,Finetune,Joint",
                                  "INCREMENTAL.TASK", task, "SEED", "{seed}", "OUTPUT_DIR", "{out}"),),
        reader="incremental_summary", result_file=f"{task}_overlap/summary.json", metrics=_INCREMENTAL_METRICS,
        paper=paper, paper_source=_MIB_PAPER.format(task=paper_task), notes=_INCREMENTAL_NOTE,
    )


_VOC_15_5 = {"MiB old": 75.5, "MiB new": 49.4, "MiB all": 69.0, "Joint all": 77.4}
_VOC_15_1 = {"MiB old": 35.1, "MiB new": 13.5, "MiB all": 29.7, "Joint all": 77.4}

register_table(Table(
    name="mask2former_semantic",
    title="Tiny Mask2Former, semantic segmentation, synthetic world, test split (500 images), mIoU %",
    commands=(_TRAIN + ("--config-file", "configs/shapes/mask2former_semantic.yaml",
                        "DATASETS.TEST", '("shapes_sem_seg_test",)', "SEED", "{seed}", "OUTPUT_DIR", "{out}"),),
    reader="detectron2_metrics", result_file="metrics.json", metrics=(("mIoU", "sem_seg/mIoU"),),
    paper={"mIoU": 47.2}, paper_source="Mask2Former R50, ADE20K semantic (MODEL_ZOO); not the synthetic world",
))
register_table(Table(
    name="mask2former_panoptic",
    title="Tiny Mask2Former, panoptic segmentation, synthetic world, test split (500 images), PQ",
    commands=(_TRAIN + ("--config-file", "configs/shapes/mask2former_panoptic.yaml",
                        "DATASETS.TEST", '("shapes_panoptic_test",)', "SEED", "{seed}", "OUTPUT_DIR", "{out}"),),
    reader="detectron2_metrics", result_file="metrics.json",
    metrics=(("PQ", "panoptic_seg/PQ"), ("PQ things", "panoptic_seg/PQ_th"), ("PQ stuff", "panoptic_seg/PQ_st")),
    paper={"PQ": 51.9}, paper_source="Mask2Former R50, COCO panoptic (MODEL_ZOO); not the synthetic world",
))
register_table(_incremental("mib_deeplabv3_6-4", "configs/shapes/mib_deeplabv3.yaml", "shapes_6-4", "15-5", _VOC_15_5))
register_table(_incremental("mib_deeplabv3_6-2-2", "configs/shapes/mib_deeplabv3.yaml", "shapes_6-2-2", "15-1",
                            _VOC_15_1))
register_table(_incremental("mib_mask2former_6-4", "configs/shapes/mib_mask2former.yaml", "shapes_6-4", "15-5",
                            _VOC_15_5))
register_table(Table(
    name="foundation",
    title="Tiny CLIP and DINO pretrained on the synthetic world (training seed = table seed), test split",
    commands=(("{python}", "tools/bench/foundation_quality.py", "--split", "test", "--clip-seed", "{seed}",
               "--dino-seed", "{seed}"),),
    reader="last_json_line", result_file="command0.log",
    metrics=(("CLIP zero-shot top-1", "clip_zero_shot_top1"), ("CLIP dense mIoU", "clip_dense_miou"),
             ("DINO foreground IoU", "dino_foreground_iou")),
    digits=3, notes="Targets: CLIP zero-shot top-1 >= 0.80 (chance 0.10), DINO foreground IoU >= 0.5.",
))


def _zero_shot_rows(variant: str, label: str, which: Sequence[str]) -> tuple:
    """``(column, reader key)`` of one PADing variant on the test split: ``which`` among mIoU seen / unseen, hIoU,
    PQ seen / unseen / HM."""
    keys = {"mIoU seen": "shapes_zs_sem_seg_test/sem_seg/mIoU_seen", "mIoU unseen": "shapes_zs_sem_seg_test/sem_seg/mIoU_unseen",
            "hIoU": "shapes_zs_sem_seg_test/sem_seg/hIoU", "PQ seen": "shapes_zs_test/panoptic_seg/PQ_seen",
            "PQ unseen": "shapes_zs_test/panoptic_seg/PQ_unseen", "PQ HM": "shapes_zs_test/panoptic_seg/HM"}
    return tuple((f"{label} {w}", f"{variant}/{keys[w]}") for w in which)


_PADING_VARIANTS = "PADing,stage1-only,GMMN,GMMN-lr1e-3,no-disentangle,no-align,no-primitives"
_ALL_ZS = ("mIoU seen", "mIoU unseen", "hIoU", "PQ seen", "PQ unseen", "PQ HM")
register_table(Table(
    name="pading_shapes",
    title="PADing vs stage 1 alone vs a GMMN generator, and its ablations, zero-shot split shapes_zs (star, hexagon, "
          "heart, sand unseen; trained on the images without them), test split, mIoU % / PQ for seen and unseen "
          "classes (configs/shapes/pading.yaml)",
    commands=(("{python}", "tools/run_zero_shot.py", "--config-file", "configs/shapes/pading.yaml", "--variants",
               _PADING_VARIANTS, "DATASETS.TEST", '("shapes_zs_test", "shapes_zs_sem_seg_test")', "SEED", "{seed}",
               "OUTPUT_DIR", "{out}"),),
    reader="variants_summary", result_file="summary.json",
    metrics=(_zero_shot_rows("PADing", "PADing", _ALL_ZS)
             + _zero_shot_rows("stage1-only", "stage 1 alone", _ALL_ZS)
             + _zero_shot_rows("GMMN", "GMMN generator", _ALL_ZS)
             + _zero_shot_rows("GMMN-lr1e-3", "GMMN generator, its own rate", _ALL_ZS)
             + _zero_shot_rows("no-disentangle", "no disentanglement", ("mIoU unseen", "PQ seen", "PQ unseen"))
             + _zero_shot_rows("no-align", "no relation alignment", ("mIoU unseen", "PQ seen", "PQ unseen"))
             + _zero_shot_rows("no-primitives", "no primitives (MLP)", ("mIoU unseen", "PQ seen", "PQ unseen"))),
    paper={"PADing mIoU seen": 40.6, "PADing mIoU unseen": 26.4, "PADing hIoU": 32.0, "PADing PQ seen": 37.7,
           "PADing PQ unseen": 14.4, "PADing PQ HM": 20.8},
    paper_source="PADing (CVPR 2023), Mask2Former R50: COCO-Stuff semantic (mIoU) and COCO panoptic (PQ) zero-shot "
                 "splits (PADing's README); not the synthetic world",
    notes="Stage 1 (the seen-class model with its text classifier) is trained once per seed and shared by every row; "
          "each generator row then trains its generator (learning rate 3e-3; the GMMN generator's own best on val, "
          "1e-3, in its second row) and retrains the classifier (1e-3), 150 iterations each. Recipes were chosen on "
          "val (docs/pading.md).",
))


# the rows the table compares: DuPL's own parts, one ablation each, and the supervised reference (the public code's
# CAM refinement and multi-scale views, NoRefinement / SingleScaleCAM, were measured on the halved schedule:
# docs/dupl.md)
_DUPL_VARIANTS = ("DuPL", "FullySupervised", "SingleStudent", "NoDiscrepancy", "FixedThreshold", "NoGMM",
                  "NoConsistency")
_DUPL_KEY = "{}/shapes_sem_seg_test/sem_seg/mIoU"
register_table(Table(
    name="dupl_shapes",
    title=("DuPL from image-level labels vs its ablations and the fully supervised model (same students and "
           "schedule, pixel labels), synthetic world, the shapes config's 800 iterations, test split "
           "(500 images), mIoU %"),
    commands=(("{python}", "tools/run_variants.py", "--config-file", "configs/shapes/dupl.yaml", "--variants",
               ",".join(_DUPL_VARIANTS), "DATASETS.TEST", '("shapes_sem_seg_test",)', "SOLVER.CHECKPOINT_PERIOD",
               "100000", "SEED", "{seed}", "OUTPUT_DIR", "{out}"),),
    reader="variants_summary", result_file="summary.json",
    metrics=((("DuPL", _DUPL_KEY.format("DuPL")), ("FullySupervised", _DUPL_KEY.format("FullySupervised")),
              ("DuPL % of FullySupervised", _DUPL_KEY.format("DuPL % of FullySupervised")))
             + tuple((v, _DUPL_KEY.format(v)) for v in _DUPL_VARIANTS[2:])),
    paper={"DuPL": 69.9}, paper_source="DuPL ViT-B/16, Pascal VOC 2012 val mIoU (paper); not the synthetic world",
    notes="Recipe chosen on val (docs/dupl.md); the ablations are the `PROTOCOL.VARIANTS` of configs/shapes/dupl.yaml.",
))


_PSEUDO = ("{python}", "tools/generate_pseudo_labels.py", "--config-file", "configs/shapes/fmwiss_deeplabv3.yaml",
           "--split", "test")
_STEP1 = ("INCREMENTAL.STEP", "1", "OUTPUT_DIR", "{out}")
register_table(Table(
    name="fmwiss_pseudo_labels",
    title="Pseudo-label quality of the weak step of shapes_6-4 (overlap): the step-1 view of the test split (images "
          "showing a new class, image labels = the new classes present, old classes as background), IoU % against "
          "the masks, which training never reads (configs/shapes/fmwiss_deeplabv3.yaml)",
    commands=(("{python}", "tools/train_net.py", "--config-file", "configs/shapes/fmwiss_deeplabv3.yaml",
               "INCREMENTAL.STEP", "0", "SEED", "{seed}", "SOLVER.CHECKPOINT_PERIOD", "100000",
               "OUTPUT_DIR", "{out}"),  # the step's folder: {out}/step0
              _PSEUDO + ("--source", "CoSegmentation", "--output", "{out}/pseudo_labels/CoSegmentation.json") + _STEP1,
              _PSEUDO + ("--source", "Localizer", "--output", "{out}/pseudo_labels/Localizer.json",
                         "INCREMENTAL.PREVIOUS_WEIGHTS", "{out}/step0/model_final.pth",
                         "PSEUDO_LABELS.LOCALIZER.SEED", "{seed}") + _STEP1,
              _PSEUDO + ("--source", "CLIPSource", "--output", "{out}/pseudo_labels/CLIPSource.json") + _STEP1),
    reader="json_folder", result_file="pseudo_labels",
    metrics=tuple((f"{label} {what}", f"{source}/metrics/{key}")
                  for source, label in (("CoSegmentation", "CoSegmentation (FMWISS)"),
                                        ("Localizer", "Localizer (WILSON-style)"), ("CLIPSource", "CLIP alone"))
                  for what, key in (("new-class mIoU", "mIoU_labelled"), ("mIoU with background", "mIoU"))),
    notes="The tiny CLIP and DINO are the cached seed-0 models in every seed, as the FMWISS table uses them (like "
          "published weights), so CoSegmentation and CLIP alone do not vary; the seed is the step-0 model's, on "
          "which the Localizer is trained, and the Localizer's own.",
))


_FMWISS_METHODS = ("FMWISS", "WILSON", "MiB-pixel", "FMWISS-noteacher", "FMWISS-nocontrastive", "FMWISS-nocopypaste",
                   "FMWISS-CLIP")
register_table(Table(
    name="fmwiss_6-4",
    title="Weakly incremental shapes_6-4 (overlap; new classes from image labels): FMWISS vs the WILSON-style "
          "localizer, its ablations and MiB with pixel labels, mIoU % old / new / all "
          "(configs/shapes/fmwiss_deeplabv3.yaml)",
    commands=(_INCREMENTAL + ("--config-file", "configs/shapes/fmwiss_deeplabv3.yaml",
                              "--methods", ",".join(_FMWISS_METHODS), "SEED", "{seed}", "OUTPUT_DIR", "{out}"),),
    reader="incremental_summary", result_file="shapes_6-4_overlap/summary.json",
    metrics=tuple((f"{m} {part}", f"{m}/mIoU_{part}") for m in _FMWISS_METHODS for part in ("old", "new", "all")),
    paper={"FMWISS all": 73.3, "WILSON old": 74.2, "WILSON new": 41.7, "WILSON all": 67.2,
           "MiB-pixel old": 75.5, "MiB-pixel new": 49.4, "MiB-pixel all": 69.0},
    paper_source="Pascal VOC 2012 15-5 overlapped, DeepLabV3 ResNet-101: FMWISS (CVPR 2023; all classes only; "
                 "70.7 disjoint), WILSON (CVPR 2022, Table 1), MiB with pixel labels (CVPR 2020, Table 1); "
                 "not the synthetic world",
    notes="WILSON = FMWISS's training with the `Localizer` source (a CAM head on the old model), not WILSON's own "
          "method. " + _INCREMENTAL_NOTE,
))
