"""AtomicCheckpointer: kills leave whole files, damaged files are named and skipped on resume, strict loads
name both models."""
import logging
import os

import pytest
import torch
from torch import nn

from detectron2.modeling import build_model

import fmwiss_d2.modeling  # noqa: F401
from _model_cfg import tiny_cfg
from fmwiss_d2.engine.checkpoint import (
    AtomicCheckpointer, CheckpointMismatchError, DamagedCheckpointError, checkpoint_candidates, is_loadable,
    model_stamp, newest_loadable_checkpoint,
)
from fmwiss_d2.utils.errors import UserError


class _Counter:
    """A checkpointable holding one number (as the trainer's iteration)."""

    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def _model(fill):
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.fill_(fill)
        m.bias.fill_(fill)
    return m


def _save(folder, name, fill, count):
    """Writes ``name`` with weights all ``fill`` and counter ``count``, as a training run would."""
    AtomicCheckpointer(_model(fill), str(folder), counter=_Counter(count)).save(name)
    return os.path.join(folder, name + ".pth")


def _truncate(path):
    """What a kill during a plain (non-atomic) write leaves: the first half of the bytes."""
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _resume(folder, weights=""):
    model, counter = _model(0.0), _Counter(-1)
    ck = AtomicCheckpointer(model, str(folder), counter=counter)
    ck.resume_or_load(weights, resume=True)
    return model, counter, ck


def test_truncated_checkpoint_raises_damaged_naming_the_file(tmp_path):
    path = _save(tmp_path, "model_0000004", 1.0, 4)
    _truncate(path)
    assert not is_loadable(path)
    with pytest.raises(DamagedCheckpointError, match="model_0000004.pth.*--resume") as e:
        AtomicCheckpointer(_model(0.0)).load(path)
    assert isinstance(e.value, UserError) and isinstance(e.value, RuntimeError)
    # the failed load leaves the checkpointer usable (detectron2 would assert on its leftover URL state)
    good = _save(tmp_path, "model_0000002", 2.0, 2)
    model = _model(0.0)
    AtomicCheckpointer(model).load(good)
    assert model.weight.eq(2.0).all()


def test_resume_falls_back_to_the_previous_loadable_checkpoint(tmp_path, caplog):
    _save(tmp_path, "model_0000001", 1.0, 1)
    damaged = _save(tmp_path, "model_0000003", 3.0, 3)  # the newest, named by last_checkpoint
    assert open(tmp_path / "last_checkpoint").read() == "model_0000003.pth"
    _truncate(damaged)
    with caplog.at_level(logging.WARNING):
        model, counter, ck = _resume(tmp_path)
    assert model.weight.eq(1.0).all() and model.bias.eq(1.0).all() and counter.value == 1
    assert any("model_0000003.pth" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert ck.has_checkpoint()  # DefaultTrainer then starts at iteration counter + 1
    assert newest_loadable_checkpoint(str(tmp_path)) == os.path.join(tmp_path, "model_0000001.pth")


def test_resume_starts_from_weights_when_no_checkpoint_loads(tmp_path):
    weights = _save(tmp_path / "pretrained", "weights", 7.0, 0)
    _truncate(_save(tmp_path, "model_0000001", 1.0, 1))
    model, counter, ck = _resume(tmp_path, weights)
    assert model.weight.eq(7.0).all() and counter.value == -1  # only the model, no trainer state
    assert not ck.has_checkpoint()  # so DefaultTrainer starts at iteration 0, not 1
    assert newest_loadable_checkpoint(str(tmp_path)) is None


@pytest.mark.parametrize("last", ["", "model_0000009.pth"], ids=["empty", "dangling"])
def test_empty_or_dangling_last_checkpoint(tmp_path, last):
    weights = _save(tmp_path / "pretrained", "weights", 7.0, 0)
    (tmp_path / "last_checkpoint").write_text(last)
    model, _, ck = _resume(tmp_path, weights)  # fvcore: AssertionError "Checkpoint <dir>/ not found!"
    assert model.weight.eq(7.0).all() and not ck.has_checkpoint()
    _save(tmp_path, "model_0000002", 2.0, 2)
    (tmp_path / "last_checkpoint").write_text(last)  # a checkpoint exists, but last_checkpoint does not name it
    model, counter, _ = _resume(tmp_path, weights)
    assert model.weight.eq(2.0).all() and counter.value == 2


def test_interrupted_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = _save(tmp_path, "model_final", 1.0, 1)
    before = open(path, "rb").read()
    real_save = torch.save

    def killed_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # part of the bytes are out, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, "model_final", 2.0, 2)
    monkeypatch.setattr(torch, "save", real_save)
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]


def test_candidates_order_and_newest_loadable(tmp_path):
    for name in ("model_0000001", "model_0000010", "model_final", "model_0000002"):
        _save(tmp_path, name, 1.0, 1)
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    (tmp_path / "notes.pth").write_bytes(b"")  # not a model_*.pth: never a candidate
    names = [os.path.basename(p) for p in checkpoint_candidates(str(tmp_path))]
    assert names == ["model_0000001.pth", "model_final.pth", "model_0000010.pth", "model_0000002.pth"]
    _truncate(tmp_path / "model_0000001.pth")
    _truncate(tmp_path / "model_final.pth")
    assert newest_loadable_checkpoint(str(tmp_path)) == os.path.join(tmp_path, "model_0000010.pth")


def test_save_stamps_and_strict_load_names_both_architectures(tmp_path):
    deeplab = build_model(tiny_cfg("shapes/deeplabv3_semantic.yaml"))
    maskformer = build_model(tiny_cfg("shapes/mask2former_semantic.yaml"))
    assert model_stamp(deeplab) == {"meta_architecture": "DeepLabV3", "num_classes": 11}
    AtomicCheckpointer(deeplab, str(tmp_path)).save("model_final")
    path = str(tmp_path / "model_final.pth")
    assert torch.load(path, weights_only=False)["model_stamp"] == model_stamp(deeplab)

    with pytest.raises(CheckpointMismatchError) as e:
        AtomicCheckpointer(maskformer, strict=True).load(path)
    msg = str(e.value)
    assert "model_final.pth" in msg
    assert "checkpoint is a DeepLabV3 with 11 classes; this config builds a MaskFormer with 11 classes" in msg
    assert "keys missing from the checkpoint" in msg and "unexpected keys in the checkpoint" in msg
    assert "(+" in msg  # more than five differing keys: only five are named

    AtomicCheckpointer(maskformer).load(path)  # lenient (detectron2's behaviour): loads what fits, logs the rest
    again = build_model(tiny_cfg("shapes/deeplabv3_semantic.yaml"))
    AtomicCheckpointer(again, strict=True).load(path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), deeplab.state_dict().values()))


def test_strict_load_of_an_unstamped_file_names_the_keys(tmp_path):
    path = str(tmp_path / "plain.pth")
    torch.save({"model": {"weight": torch.zeros(2, 4), "bias": torch.zeros(2), "extra": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)Linear.*weight: checkpoint \(2, 4\) vs model \(2, 3\)"
                                                      r".*unexpected keys in the checkpoint: extra"):
        AtomicCheckpointer(_model(0.0), strict=True).load(path)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth.*MODEL.WEIGHTS"):
        AtomicCheckpointer(_model(0.0)).resume_or_load(str(tmp_path / "nowhere.pth"), resume=False)


def test_foundation_reader_reports_damaged_files(tmp_path):
    from fmwiss_d2.modeling.foundation.checkpoint import read_checkpoint

    path = str(tmp_path / "clip.pt")
    torch.save({"w": torch.zeros(100)}, path)
    _truncate(path)
    with pytest.raises(DamagedCheckpointError, match="clip.pt.*pretrained again"):
        read_checkpoint(path)
