"""Several runs in one process (the protocol runners' stages) each log a line once, into their own log file."""
import logging

from fmwiss_d2.engine.launch import argument_parser, setup


def test_each_stage_logs_once_into_its_own_folder(tmp_path):
    folders = [tmp_path / "stage1", tmp_path / "stage2"]
    for folder in folders:
        args = argument_parser().parse_args(["--config-file", "configs/shapes/deeplabv3_semantic.yaml",
                                             "OUTPUT_DIR", str(folder), "MODEL.DEVICE", "cpu"])
        setup(args)
        logging.getLogger("fmwiss_d2").info("marker line of %s", folder.name)
    logs = [(f / "log.txt").read_text() for f in folders]
    assert logs[0].count("marker line of stage1") == 1 and "stage2" not in logs[0]
    assert logs[1].count("marker line of stage2") == 1 and "stage1" not in logs[1]
    for name in ("detectron2", "fmwiss_d2"):
        files = [getattr(h.stream, "name", "") for h in logging.getLogger(name).handlers]
        consoles = [f for f in files if not str(f).endswith("log.txt")]
        assert len(consoles) == 1 and [f for f in files if f not in consoles] == [str(folders[1] / "log.txt")], files
