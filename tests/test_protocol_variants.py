"""Named variants (``PROTOCOL.VARIANTS``): parsing, resolution, their place in an incremental protocol (from step 1
on; step 0 stays shared) and the comparison of task-less runs (``run_variants``), with a recording fake trainer."""
import json
import os

import pytest
import torch

from fmwiss_d2.engine.launch import argument_parser
from fmwiss_d2.engine.protocol import incremental_stages, parse_variants, resolve_variant, run_variants
from fmwiss_d2.utils.errors import UnknownNameError, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = os.path.join(ROOT, "configs", "shapes", "mib_deeplabv3.yaml")
SUPERVISED = os.path.join(ROOT, "configs", "shapes", "deeplabv3_semantic.yaml")
VARIANTS = '["MiB-kd1: METHOD.MIB.KD_WEIGHT 1.0", "FT-lr: METHOD.NAME Finetune SOLVER.BASE_LR 0.1"]'


def _cfg(*opts):
    from fmwiss_d2.engine.launch import load_config

    return load_config(MIB, list(opts))


def test_variant_specs_parse_into_overrides_and_bad_ones_are_named():
    assert parse_variants(["a: X.Y 1 Z 2", "b:"]) == {"a": ("X.Y", "1", "Z", "2"), "b": ()}
    for bad, why in (("no colon here", "not 'NAME: KEY VALUE"), ("a: X.Y", "not 'NAME"), (": X 1", "not 'NAME"),
                     ("two words: X 1", "not 'NAME")):
        with pytest.raises(UserError, match=why):
            parse_variants([bad])
    with pytest.raises(UserError, match="defines 'a' twice"):
        parse_variants(["a: X 1", "a: X 2"])


def test_a_variant_resolves_to_its_method_transform_and_overrides():
    cfg = _cfg("PROTOCOL.VARIANTS", VARIANTS)
    v = resolve_variant("MiB-kd1", cfg)
    assert (v.method, v.transform, v.opts) == ("MiB", "", ("METHOD.MIB.KD_WEIGHT", "1.0"))  # the config's METHOD.NAME
    assert resolve_variant("FT-lr", cfg).method == "Finetune"
    assert (resolve_variant("Joint", cfg).method, resolve_variant("Joint", cfg).transform) == ("Finetune", "Joint")
    with pytest.raises(UnknownNameError, match="'Nope' is neither a variant .*MiB-kd1.* a method .*MiB"):
        resolve_variant("Nope", cfg)
    with pytest.raises(UnknownNameError, match="'typo': METHOD.NAME 'MiBB' is not registered"):
        resolve_variant("typo", _cfg("PROTOCOL.VARIANTS", '["typo: METHOD.NAME MiBB"]'))
    with pytest.raises(UserError, match="'MiB' is already a method"):
        resolve_variant("MiB", _cfg("PROTOCOL.VARIANTS", '["MiB: METHOD.MIB.KD_WEIGHT 1.0"]'))


def test_variant_overrides_apply_from_step_1_and_step_0_stays_shared(tmp_path):
    args = argument_parser().parse_args(["--config-file", MIB, "OUTPUT_DIR", str(tmp_path), "PROTOCOL.VARIANTS",
                                         VARIANTS])
    cfg = _cfg(*args.opts)
    calls = []
    plan = incremental_stages(args, cfg, ["MiB", "MiB-kd1"], train=lambda a, opts, folder: calls.append((opts, folder)))
    stages = list(dict.fromkeys(stage for _, _, stage, _ in plan))
    assert [s.name for s in stages] == ["step0", "MiB/step1", "MiB-kd1/step1"]  # one shared step 0
    for s in stages:
        s.run()
    (opts0, _), (opts_mib, _), (opts_kd1, folder_kd1) = calls
    assert "METHOD.MIB.KD_WEIGHT" not in opts0 and "METHOD.MIB.KD_WEIGHT" not in opts_mib
    i = opts_kd1.index("METHOD.MIB.KD_WEIGHT")
    assert opts_kd1[i + 1] == "1.0" and folder_kd1 == os.path.join(str(tmp_path), "shapes_6-4_overlap", "MiB-kd1", "step1")
    assert opts_kd1[opts_kd1.index("METHOD.NAME") + 1] == "MiB"


def _fake_train(scores, trained):
    """Writes what a finished run writes: a loadable final model and the evaluation results file."""
    def train(args, opts, folder):
        name = os.path.basename(folder)
        trained.append((name, list(opts)))
        os.makedirs(os.path.join(folder, "inference"), exist_ok=True)
        torch.save({"model": {}}, os.path.join(folder, "model_final.pth"))
        with open(os.path.join(folder, "inference", "results.json"), "w") as f:
            json.dump({"shapes_sem_seg_val": {"sem_seg": {"mIoU": scores[name]}}}, f)
    return train


def test_run_variants_trains_each_once_and_tabulates_the_metric(tmp_path, capsys):
    argv = ["--config-file", SUPERVISED, "OUTPUT_DIR", str(tmp_path), "PROTOCOL.VARIANTS",
            '["lr-high: SOLVER.BASE_LR 0.01"]']
    trained = []
    summary = run_variants(argument_parser().parse_args(argv), ["Supervised", "lr-high"],
                           train=_fake_train({"Supervised": 61.25, "lr-high": 40.0}, trained))
    assert [n for n, _ in trained] == ["Supervised", "lr-high"]
    assert trained[1][1][:2] == ["METHOD.NAME", "Supervised"] and "SOLVER.BASE_LR" in trained[1][1]
    assert [(r["variant"], r["sem_seg/mIoU"]) for r in summary["rows"]] == [("Supervised", 61.25), ("lr-high", 40.0)]
    out = capsys.readouterr().out
    assert "| Supervised | shapes_sem_seg_val | 61.2 " in out and "| lr-high    | shapes_sem_seg_val | 40.0 " in out
    assert (tmp_path / "summary.csv").read_text().splitlines()[1] == "Supervised,shapes_sem_seg_val,61.25"
    again = run_variants(argument_parser().parse_args(argv), ["Supervised", "lr-high"],
                         train=_fake_train({}, trained))  # finished: nothing runs
    assert len(trained) == 2 and again["rows"] == summary["rows"]


def test_run_variants_refuses_tasks_and_transforms(tmp_path):
    with pytest.raises(UserError, match="use tools/run_incremental.py"):
        run_variants(argument_parser().parse_args(["--config-file", MIB, "OUTPUT_DIR", str(tmp_path)]), [],
                     train=_fake_train({}, []))
    with pytest.raises(UserError, match="'Joint' applies the task transform"):
        run_variants(argument_parser().parse_args(["--config-file", SUPERVISED, "OUTPUT_DIR", str(tmp_path)]),
                     ["Joint"], train=_fake_train({}, []))
