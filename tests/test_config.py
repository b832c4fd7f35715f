"""add_fmwiss_config: every key has a default and a comment; unknown keys fail as in detectron2."""
import inspect
import re

import pytest
from detectron2.config import get_cfg

from fmwiss_d2 import config as fmwiss_config
from fmwiss_d2.config import add_fmwiss_config


def test_defaults_and_unknown_key(tmp_path):
    cfg = get_cfg()
    add_fmwiss_config(cfg)
    assert cfg.SHAPES.NUM_TRAIN == 2000 and cfg.INCREMENTAL.TASK == "" and cfg.INCREMENTAL.SETTING == "overlap"
    good = tmp_path / "good.yaml"
    good.write_text("INCREMENTAL:\n  TASK: shapes_6-4\n  STEP: 1\n")
    cfg.merge_from_file(str(good))
    assert cfg.INCREMENTAL.STEP == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("INCREMENTAL:\n  TASKK: shapes_6-4\n")
    with pytest.raises(KeyError, match="Non-existent config key: INCREMENTAL.TASKK"):
        cfg.merge_from_file(str(bad))


def test_every_key_is_commented():
    for line in inspect.getsource(fmwiss_config).splitlines():
        if re.match(r"\s*cfg\.[A-Z0-9_.]+\s*=", line) and "CN()" not in line:
            assert "#" in line, f"config key without a comment: {line.strip()}"


def _depth(path):
    import os

    import yaml

    base = (yaml.safe_load(open(path)) or {}).get("_BASE_")
    return 1 + (_depth(os.path.join(os.path.dirname(path), base)) if base else 0)


def test_every_shipped_config_merges_and_inherits_at_most_three_levels():
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    files = [f for f in glob.glob(os.path.join(root, "**", "*.yaml"), recursive=True) if "/tasks/" not in f]
    assert len(files) >= 10
    for f in files:
        cfg = get_cfg()
        add_fmwiss_config(cfg)
        cfg.merge_from_file(f)  # unknown keys would raise
        assert _depth(f) <= 3, f"{f} inherits more than three levels"
        assert "!!python" not in open(f).read()
