"""Every command of the README works: each ``python tools/...`` line of its bash blocks is run (on a tiny world,
with a few iterations, in a scratch folder), the ``make`` targets' commands too; a command that needs real data
or weights is parsed and its config keys checked. The commands run in the README's order, so an evaluation runs
on the checkpoint the training before it wrote."""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["MODEL.DEVICE", "cpu", "SHAPES.SEED", "3", "SHAPES.IMAGE_SIZE", "64", "SHAPES.NUM_TRAIN", "24",
        "SHAPES.NUM_VAL", "8", "SHAPES.NUM_TEST", "8", "SOLVER.MAX_ITER", "2", "INCREMENTAL.STEP_MAX_ITER", "2",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000", "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TEST", "64",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "MODEL.CLIP.PRETRAIN.STEPS", "2",
        "MODEL.CLIP.PRETRAIN.BATCH_SIZE", "4", "MODEL.DINO.PRETRAIN.STEPS", "2", "MODEL.DINO.PRETRAIN.BATCH_SIZE", "4"]
REAL_DATA = re.compile(r"configs/(voc|ade|coco)/|<[^>]+>")


def readme_commands():
    """The README's bash-block commands, continuation lines joined, comments dropped."""
    text = open(os.path.join(ROOT, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def make_recipe(target):
    """The python commands of a Makefile target ($(PY) as python)."""
    text = open(os.path.join(ROOT, "Makefile")).read()
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n?)*)", text, re.M)
    assert m, f"README runs 'make {target}', which the Makefile does not define"
    return [line.strip().replace("$(PY)", "python") for line in m.group(1).splitlines()
            if "$(PY)" in line and "pytest" not in line]


def to_run():
    out = []
    for cmd in readme_commands():
        if cmd.startswith("make "):
            out += make_recipe(cmd.split()[1])
        else:
            assert cmd.startswith("python tools/"), f"README command not covered by this test: {cmd}"
            out.append(cmd)
    return out


def reproduce_argv(argv, tmp_path):
    """A results command on the tiny world, seed 0, into ``tmp_path`` (``--list`` as it is). A table whose tools
    take no config overrides (the foundation bench pretrains its models) is not run: its tools must parse."""
    from fmwiss_d2.utils.results import TABLES

    if "--list" in argv:
        return argv
    names = [n for n in argv[2:] if not n.startswith("-")]
    names = list(TABLES) if names == ["all"] else names
    for name in names:
        for command in ([] if TABLES[name].takes_overrides else TABLES[name].commands):
            proc = subprocess.run([sys.executable, command[1], "--help"], cwd=ROOT, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr[-2000:]
    runnable = [n for n in names if TABLES[n].takes_overrides]
    return argv[:2] + runnable + ["--seeds", "0", "--output-root", str(tmp_path / "results_runs"),
                                  "--results-dir", str(tmp_path / "results"), "--config-overrides", shlex.join(TINY)]


def test_readme_has_the_two_commands_first():
    assert readme_commands()[:2] == ["make demo", "make test"]


def test_every_readme_command_runs(tmp_path):
    from fmwiss_d2.engine.launch import argument_parser, load_config

    for name in ("configs", "tools", "fmwiss_d2"):  # this checkout's code, whatever is installed
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = dict(os.environ, FMWISS_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    ran = []
    for cmd in to_run():
        argv = shlex.split(re.sub(r"<[^>]+>", "PLACEHOLDER", cmd))
        if REAL_DATA.search(cmd):  # real data or weights: the command parses and its keys exist
            for flag in ("--methods", "--variants"):  # the protocol runners' own flags
                if flag in argv:
                    i = argv.index(flag)
                    argv = argv[:i] + argv[i + 2:]
            args = argument_parser().parse_args(argv[2:])
            load_config(os.path.join(ROOT, args.config_file), args.opts)
            continue
        extra = TINY if argv[1] != "tools/describe_task.py" else TINY[2:12]
        if argv[1] == "tools/reproduce.py":
            argv, extra = reproduce_argv(argv, tmp_path), []
        proc = subprocess.run([sys.executable] + argv[1:] + extra, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}\n{(proc.stdout + proc.stderr)[-3000:]}"
        ran.append(cmd)
    assert any("--eval-only" in c for c in ran) and any("run_incremental" in c for c in ran)
    out = tmp_path / "output" / "shapes"
    for summary in ("incremental_deeplabv3/shapes_6-4_overlap", "fmwiss_deeplabv3/shapes_6-4_overlap", "dupl", "pading"):
        assert (out / summary / "summary.json").is_file(), summary
    assert (tmp_path / "pseudo_labels.png").stat().st_size > 0
