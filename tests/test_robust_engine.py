"""Faults the engine refuses or survives: wrong-architecture evaluation, MODEL.WEIGHTS at a later step, a
missing previous step, a misspelled method, a damaged final model, two trainers in one folder."""
import os

import pytest
import torch
from detectron2.modeling import build_model

from _model_cfg import tiny_cfg
from fmwiss_d2.engine.checkpoint import AtomicCheckpointer
from fmwiss_d2.engine.incremental import IncrementalCheckpointer, check_previous_weights, configure_step
from fmwiss_d2.engine.launch import argument_parser
from fmwiss_d2.utils.errors import CheckpointMismatchError, UnknownNameError, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEPLAB = "shapes/deeplabv3_semantic.yaml"
M2F = "shapes/mask2former_semantic.yaml"


def test_eval_only_refuses_another_architectures_checkpoint(tmp_path):
    from fmwiss_d2.engine import Trainer

    AtomicCheckpointer(build_model(tiny_cfg(M2F)), str(tmp_path)).save("m2f")
    with pytest.raises(CheckpointMismatchError, match="MaskFormer with 11 classes.*DeepLabV3 with 11 classes"):
        Trainer.build_eval_model(tiny_cfg(DEEPLAB), str(tmp_path / "m2f.pth"))


def _step0_checkpoint(folder, task="shapes_6-4"):
    from fmwiss_d2.data.datasets.tasks import get_task

    cfg = configure_step(tiny_cfg(DEEPLAB, "INCREMENTAL.TASK", task, "OUTPUT_DIR", str(folder)))
    stamp = {"task": task, "step": 0, "classes": get_task(task).seen_classes(0)}
    IncrementalCheckpointer(build_model(cfg), str(folder), identity=stamp).save("model_final")
    return str(folder / "model_final.pth")


def test_model_weights_at_a_later_step_is_honoured_when_it_is_the_previous_step(tmp_path, caplog):
    prev = _step0_checkpoint(tmp_path / "elsewhere")
    cfg = configure_step(tiny_cfg(DEEPLAB, "INCREMENTAL.TASK", "shapes_6-4", "INCREMENTAL.STEP", "1",
                                  "MODEL.WEIGHTS", prev, "OUTPUT_DIR", str(tmp_path / "run")))
    assert cfg.INCREMENTAL.PREVIOUS_WEIGHTS == prev and cfg.MODEL.WEIGHTS == prev
    check_previous_weights(cfg)  # exists: no error
    # a step-1 run whose MODEL.WEIGHTS is not an incremental checkpoint (a backbone): said in the log, not used
    backbone = tmp_path / "backbone.pth"
    torch.save({"model": {}}, backbone)
    with caplog.at_level("WARNING", logger="fmwiss_d2"):
        cfg = configure_step(tiny_cfg(DEEPLAB, "INCREMENTAL.TASK", "shapes_6-4", "INCREMENTAL.STEP", "1",
                                      "MODEL.WEIGHTS", str(backbone), "OUTPUT_DIR", str(tmp_path / "run")))
    assert cfg.MODEL.WEIGHTS == str(tmp_path / "run" / "step0" / "model_final.pth")
    assert f"MODEL.WEIGHTS {backbone} is not used at step 1" in caplog.text
    with pytest.raises(UserError, match="INCREMENTAL.PREVIOUS_WEIGHTS '.*step0/model_final.pth' does not exist: "
                                        "run step 0 first"):
        check_previous_weights(cfg)


def test_the_previous_step_of_another_task_is_refused(tmp_path):
    from fmwiss_d2.engine.incremental import build_old_model

    prev = _step0_checkpoint(tmp_path / "other", task="shapes_6-2-2")
    cfg = configure_step(tiny_cfg(DEEPLAB, "INCREMENTAL.TASK", "shapes_6-4", "INCREMENTAL.STEP", "1",
                                  "INCREMENTAL.PREVIOUS_WEIGHTS", prev, "OUTPUT_DIR", str(tmp_path / "run")))
    with pytest.raises(CheckpointMismatchError, match="belongs to task 'shapes_6-2-2'"):
        build_old_model(cfg, build_model)


def test_a_misspelled_method_is_refused_before_anything_trains(tmp_path):
    from fmwiss_d2.engine.protocol import run_incremental

    args = argument_parser().parse_args(["--config-file", os.path.join(ROOT, "configs", "shapes", "mib_deeplabv3.yaml"),
                                         "OUTPUT_DIR", str(tmp_path)])
    trained = []
    with pytest.raises(UnknownNameError, match="'Fintune' is neither a variant .* a method .*'Finetune'.*task transform .*'Joint'"):
        run_incremental(args, ["MiB", "Fintune"], train=lambda *a: trained.append(a))
    assert trained == []


def test_a_stage_whose_final_model_is_damaged_runs_again(tmp_path):
    from fmwiss_d2.engine.protocol import Stage, run_stages

    def train():
        AtomicCheckpointer(torch.nn.Linear(2, 2), str(tmp_path)).save("model_final")

    stage = Stage("step0", str(tmp_path), train, outputs=["model_final.pth"])
    assert run_stages([stage]) == ["ran"] and run_stages([stage]) == ["skipped"]
    data = (tmp_path / "model_final.pth").read_bytes()
    (tmp_path / "model_final.pth").write_bytes(data[: len(data) // 2])  # killed while copying, disk full...
    assert run_stages([stage]) == ["ran"]


def test_a_second_trainer_in_the_same_folder_is_refused(tiny_world, tmp_path):
    from fmwiss_d2.engine.launch import main
    from fmwiss_d2.engine.lock import OutputDirLock, OutputDirLockedError

    args = argument_parser().parse_args(["--config-file", os.path.join(ROOT, "configs", DEEPLAB),
                                         "DATASETS.TRAIN", '("tiny_shapes_sem_seg_train",)', "DATASETS.TEST", "()",
                                         "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path)])
    with OutputDirLock(str(tmp_path)):  # another trainer holds the folder
        with pytest.raises(OutputDirLockedError, match=f"{tmp_path}.*in use by process {os.getpid()}"):
            main(args)
    assert not (tmp_path / "model_final.pth").exists()
