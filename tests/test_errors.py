"""run_cli reports the user's errors in one line with exit code 2 and keeps bugs' tracebacks; registry_get
lists the valid names."""
import pytest

from detectron2.config import get_cfg
from detectron2.utils.registry import Registry

from fmwiss_d2.utils.errors import (
    USER_ERROR_EXIT_CODE, DamagedCacheError, UnknownNameError, UserError, registry_get, run_cli,
)


def _run(capsys, main, argv=None):
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    return e.value.code, capsys.readouterr().err


def test_user_error_is_one_line_with_exit_code_2(capsys, monkeypatch):
    monkeypatch.delenv("FMWISS_TRACEBACK", raising=False)

    def main(argv):
        raise DamagedCacheError(f"file {argv[0]} is truncated; delete the folder")

    code, err = _run(capsys, main, ["x.png"])
    assert code == USER_ERROR_EXIT_CODE == 2
    assert err == "error: file x.png is truncated; delete the folder\n"


def test_traceback_on_request(capsys, monkeypatch):
    monkeypatch.setenv("FMWISS_TRACEBACK", "1")

    def main():
        raise UserError("bad task")

    code, err = _run(capsys, main)
    assert code == 2
    assert err.startswith("Traceback (most recent call last)") and "in main" in err
    assert err.endswith("error: bad task\n")


@pytest.mark.parametrize("opts, expected", [
    (["NO.SUCH_KEY", "1"], "error: config: Non-existent key: NO.SUCH_KEY\n"),
    (["SOLVER.MAX_ITER", "ten"], "for config key: SOLVER.MAX_ITER\n"),
    (["SOLVER.MAX_ITER"], "error: config: Override list has odd length"),
])
def test_config_errors_are_the_users(capsys, monkeypatch, opts, expected):
    monkeypatch.delenv("FMWISS_TRACEBACK", raising=False)
    code, err = _run(capsys, lambda: get_cfg().merge_from_list(opts))
    assert code == 2 and expected in err and "Traceback" not in err


def test_missing_or_malformed_config_file(capsys, tmp_path):
    code, err = _run(capsys, lambda: get_cfg().merge_from_file(str(tmp_path / "nope.yaml")))
    assert code == 2 and err == f"error: config: Config file '{tmp_path / 'nope.yaml'}' does not exist!\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("SOLVER: [1\n")
    code, err = _run(capsys, lambda: get_cfg().merge_from_file(str(bad)))
    assert code == 2 and err.startswith("error: invalid YAML:") and err.count("\n") == 1
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("SOLVER:\n  NO_SUCH_KEY: 1\n")
    code, err = _run(capsys, lambda: get_cfg().merge_from_file(str(unknown)))
    assert code == 2 and "Non-existent config key: SOLVER.NO_SUCH_KEY" in err


def test_bugs_keep_their_traceback():
    def main():
        raise KeyError("some_dict_key")  # a plain KeyError is a bug, not a config error

    with pytest.raises(KeyError):
        run_cli(main)
    assert run_cli(lambda: 41 + 1) == 42


def test_registry_get_lists_valid_names_and_the_config_key():
    reg = Registry("THING")

    @reg.register()
    def beta():
        pass

    @reg.register()
    def alpha():
        pass

    assert registry_get(reg, "beta", "MODEL.THING") is beta
    with pytest.raises(UnknownNameError) as e:
        registry_get(reg, "gamma", "MODEL.THING")
    assert str(e.value) == ("MODEL.THING: unknown name 'gamma'; registered: alpha, beta. "
                            "Set MODEL.THING to one of these.")
    assert isinstance(e.value, KeyError) and isinstance(e.value, UserError)


def test_the_users_errors_share_one_base_and_keep_their_builtin_one():
    from fmwiss_d2.data.datasets.panoptic_to_semantic import PanopticBaseError
    from fmwiss_d2.data.datasets.tasks import TaskDefinitionError
    from fmwiss_d2.engine.checkpoint import CheckpointMismatchError, DamagedCheckpointError
    from fmwiss_d2.engine.lock import OutputDirLockedError
    from fmwiss_d2.modeling.foundation.checkpoint import CheckpointMismatchError as FoundationMismatch

    assert FoundationMismatch is CheckpointMismatchError  # one class per meaning
    for cls, builtin in [(TaskDefinitionError, ValueError), (PanopticBaseError, ValueError),
                         (CheckpointMismatchError, ValueError), (DamagedCheckpointError, RuntimeError),
                         (OutputDirLockedError, RuntimeError), (DamagedCacheError, RuntimeError)]:
        assert issubclass(cls, UserError) and issubclass(cls, builtin), cls
