#!/usr/bin/env python
"""Fault injection: kill an incremental protocol at every phase, rerun it, compare with an uninterrupted run.

    python tools/bench/faults.py [--workdir DIR]

Runs ``tools/run_incremental.py`` (tiny DeepLabV3, task shapes_6-4 on a tiny world, MiB, 4 iterations per step)
in child processes. Each fault kills the child with exit code 137, as SIGKILL would, at one phase: during a
training step, while a checkpoint file is half written, right after a step finished (between steps). The same
command is then run again, unchanged, and its summary (old/new/all mIoU of every step) must equal the
uninterrupted run's exactly. Prints one JSON line: runs, faults injected, runs that finished identical.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, {root!r})
    fault = os.environ.get("FAULT", "")
    kind, _, arg = fault.partition(":")
    if kind == "iter":  # killed during training: at iteration N of the K-th training (N:K)
        from detectron2.engine import HookBase
        from fmwiss_d2.engine import Trainer
        n, k = (int(v) for v in arg.split("/"))
        runs = []
        class Kill(HookBase):
            def after_step(self):
                if len(runs) == k and self.trainer.iter == n:
                    os._exit(137)
        orig = Trainer.build_hooks
        def hooks(self):
            runs.append(1)
            return orig(self) + [Kill()]
        Trainer.build_hooks = hooks
    elif kind == "save":  # killed while the N-th checkpoint is being written: half of its bytes on disk
        import io, torch
        from fmwiss_d2.engine import checkpoint
        saves = []
        real_save = torch.save
        def save(obj, f, *a, **k):
            saves.append(1)
            if len(saves) == int(arg) and not isinstance(f, (str, bytes, os.PathLike)):
                buf = io.BytesIO()
                real_save(obj, buf, *a, **k)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os._exit(137)
            return real_save(obj, f, *a, **k)
        checkpoint.torch.save = save
    elif kind == "between":  # killed right after the N-th stage finished (its stamp written)
        from fmwiss_d2.engine import protocol
        real_write = protocol.atomic_write_json
        stamps = []
        def write(path, *a, **k):
            real_write(path, *a, **k)
            if path.endswith("stage.json"):
                stamps.append(1)
                if len(stamps) == int(arg):
                    os._exit(137)
        protocol.atomic_write_json = write
    sys.argv = ["run_incremental.py"] + sys.argv[1:]
    import runpy
    runpy.run_path({tool!r}, run_name="__main__")
''')

FAULTS = ["iter:1/1", "iter:2/2", "save:1", "save:4", "between:1"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="", help="where worlds and runs go (default: a temporary folder)")
    a = parser.parse_args(argv)
    work = a.workdir or tempfile.mkdtemp(prefix="fmwiss-faults-")
    child = os.path.join(work, "child.py")
    os.makedirs(work, exist_ok=True)
    with open(child, "w") as f:
        f.write(CHILD.format(root=ROOT, tool=os.path.join(ROOT, "tools", "run_incremental.py")))
    env = dict(os.environ, OMP_NUM_THREADS="1", FMWISS_CACHE=os.path.join(work, "cache"))

    def run(out, fault=""):
        cmd = [sys.executable, child, "--config-file", os.path.join(ROOT, "configs", "shapes", "mib_deeplabv3.yaml"),
               "--methods", "MiB", "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu", "SHAPES.CACHE_DIR", env["FMWISS_CACHE"],
               "SHAPES.SEED", "3", "SHAPES.IMAGE_SIZE", "64", "SHAPES.NUM_TRAIN", "24", "SHAPES.NUM_VAL", "8", "SHAPES.NUM_TEST", "8",
               "SOLVER.MAX_ITER", "4", "INCREMENTAL.STEP_MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
               "SOLVER.IMS_PER_BATCH", "2", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TRAIN", "(64,)",
               "INPUT.MIN_SIZE_TEST", "64", "SEED", "7"]
        proc = subprocess.run(cmd, env=dict(env, FAULT=fault), capture_output=True, text=True)
        return proc.returncode, proc.stdout + proc.stderr

    def summary(out):
        with open(os.path.join(out, "shapes_6-4_overlap", "summary.json")) as f:
            return json.load(f)["steps"]

    start = time.time()
    code, log = run(os.path.join(work, "baseline"))
    if code != 0:
        sys.exit(f"the uninterrupted run failed:\n{log[-3000:]}")
    reference = summary(os.path.join(work, "baseline"))
    runs, injected, identical, cases = 1, 0, 0, []
    for fault in FAULTS:
        out = os.path.join(work, fault.replace(":", "_").replace("/", "_"))
        code, log = run(out, fault)
        runs += 1
        killed = code == 137
        injected += killed
        code2, log2 = run(out)
        runs += 1
        same = code2 == 0 and summary(out) == reference
        identical += same
        cases.append({"fault": fault, "killed": killed, "rerun_exit": code2, "identical": same})
        if code2 != 0:
            print(log2[-2000:], file=sys.stderr)
    print(json.dumps({"runs": runs, "faults_injected": injected, "faulted_runs": len(FAULTS),
                      "identical_to_uninterrupted": identical, "cases": cases,
                      "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main()
