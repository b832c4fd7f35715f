"""Training end to end (what tools/train_net.py runs) on a tiny world: exact resume, and 2 Gloo processes ==
1 process (under the conditions of that test's docstring)."""
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict

import pytest
import torch


from _hooks import Crash, LossRecorder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "shapes", "mask2former_semantic.yaml")

TINY_OPTS = [
    "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", '("tiny_shapes_sem_seg_train",)', "DATASETS.TEST", "()",
    "INPUT.MIN_SIZE_TRAIN", "(56, 64, 72)", "INPUT.MAX_SIZE_TRAIN", "144", "INPUT.CROP.SIZE", "(64, 64)",
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
    "SOLVER.WARMUP_ITERS", "2", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "SEED", "7",
]


def _load_train_net():
    from fmwiss_d2.engine import launch

    return launch


def _run(train_net, monkeypatch, out_dir, log, *, resume=False, crash_after=None):
    from fmwiss_d2.engine import Trainer

    orig = Trainer.build_hooks
    monkeypatch.setattr(Trainer, "build_hooks", lambda self: orig(self) + [LossRecorder(log, crash_after)])
    args = train_net.argument_parser().parse_args(["--config-file", CONFIG] + (["--resume"] if resume else [])
                                + TINY_OPTS + ["OUTPUT_DIR", str(out_dir)])
    try:
        train_net.main(args)
    finally:
        monkeypatch.setattr(Trainer, "build_hooks", orig)


def test_resume_continues_exactly(tiny_world, tmp_path, monkeypatch):
    """4 iterations straight == 2 iterations, a crash, then --resume for the other 2 (BatchNorm, random
    importance sampling and random augmentations all included)."""
    train_net = _load_train_net()
    straight, first, resumed = {}, {}, {}
    _run(train_net, monkeypatch, tmp_path / "a", straight)
    with pytest.raises(Crash):
        _run(train_net, monkeypatch, tmp_path / "b", first, crash_after=1)
    assert (tmp_path / "b" / "model_0000001.pth").exists() and not (tmp_path / "b" / "model_final.pth").exists()
    _run(train_net, monkeypatch, tmp_path / "b", resumed, resume=True)
    assert sorted(straight) == list(range(4)) and sorted(first) == [0, 1] and sorted(resumed) == [2, 3]
    for it in range(4):
        assert (first if it < 2 else resumed)[it]["total_loss"] == pytest.approx(straight[it]["total_loss"], rel=1e-5, abs=1e-6), (it, straight, first, resumed)
    a = torch.load(tmp_path / "a" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-5, atol=1e-6), k


_WRAPPER = """
import json, sys
from detectron2.engine import HookBase, launch
from fmwiss_d2.engine import launch as train_net
from detectron2.utils import comm
from fmwiss_d2.data.datasets.shapes import WorldSpec, register_shapes
from fmwiss_d2.engine import Trainer

register_shapes("tiny_shapes", WorldSpec(**{spec!r}), {cache!r})


class Recorder(HookBase):
    def after_step(self):
        if comm.is_main_process():
            with open({log!r}, "a") as f:
                f.write(json.dumps([self.trainer.iter, self.trainer.storage.history("total_loss").latest()]) + "\\n")


_orig = Trainer.build_hooks
Trainer.build_hooks = lambda self: _orig(self) + [Recorder()]

if __name__ == "__main__":
    args = train_net.argument_parser().parse_args(sys.argv[1:])
    launch(train_net.main, args.num_gpus, dist_url="auto", args=(args,))
"""


def _run_processes(tiny_world, tmp_path, n):
    spec, cache, _ = tiny_world
    log = tmp_path / f"loss_{n}.jsonl"
    script = tmp_path / f"run_{n}.py"
    script.write_text(textwrap.dedent(_WRAPPER.format(spec=asdict(spec),
                                                      cache=cache, log=str(log))))
    # Same total batch; GroupNorm instead of BatchNorm (per-process batch statistics would differ), every pixel
    # instead of random points, and unit no-object weight so that the class CE is a plain mean: then the mean
    # of the per-process losses is exactly the one-process loss, and DDP's averaged gradients are its gradients.
    opts = TINY_OPTS + [
        "SOLVER.MAX_ITER", "2", "MODEL.TINY.NORM", "GN", "MODEL.TINY.STEM_WIDTH", "32",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "0", "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT", "1.0",
        "OUTPUT_DIR", str(tmp_path / f"out_{n}"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), "--num-gpus", str(n), "--config-file", CONFIG] + opts,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    (tmp_path / f"stdout_{n}.txt").write_text(proc.stdout + proc.stderr)
    tail = [line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line or "error" in line]
    assert proc.returncode == 0, "\n".join(tail[-20:]) + f"\n(full output in {tmp_path}/stdout_{n}.txt)"
    return dict(json.loads(line) for line in log.read_text().splitlines())


def test_two_gloo_processes_match_one_process(tiny_world, tmp_path):
    """Holds for the settings of ``_run_processes`` (GroupNorm, every pixel, unit no-object weight), not for the
    shipped config: its BatchNorm normalizes with per-process batch statistics and its 2048 random points are
    drawn per process, so 2 processes there train a (slightly) different model than 1 process."""
    one = _run_processes(tiny_world, tmp_path, 1)
    two = _run_processes(tiny_world, tmp_path, 2)
    assert sorted(one) == sorted(two) == [0, 1]
    for it in one:
        assert two[it] == pytest.approx(one[it], rel=1e-4), (it, one, two)
