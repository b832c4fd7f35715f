"""The results mechanism (fmwiss_d2/utils/results.py) on a fake table whose command is a python one-liner."""
import json
import os
import subprocess

import numpy as np
import pytest

from fmwiss_d2.utils import results
from fmwiss_d2.utils.results import Table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Writes score = 1.5 * seed + 2 (and a nested value) to {out}/metric.json, and appends a line to a call log
# beside the seed folders (so that skipped and forced runs can be counted).
_WRITE = ("import json, sys; seed, out = int(sys.argv[1]), sys.argv[2]; "
          "open(out + '/../calls-%d.txt' % seed, 'a').write('run\\n'); "
          "json.dump({'score': 1.5 * seed + 2, 'nested': {'x': -seed}}, open(out + '/metric.json', 'w'))")
FAKE = Table(
    name="fake",
    title="A fake table",
    commands=(("{python}", "-c", _WRITE, "{seed}", "{out}"),),
    reader="json",
    result_file="metric.json",
    metrics=(("score", "score"), ("x", "nested/x")),
    seeds=(0, 1, 2),
    paper={"score": 4.0},
    paper_source="a made-up paper",
)


def _calls(root, seed):
    path = os.path.join(root, "fake", f"calls-{seed}.txt")
    return len(open(path).read().splitlines()) if os.path.exists(path) else 0


def test_per_seed_numbers_mean_std_and_schema(tmp_path):
    root, out = str(tmp_path / "runs"), str(tmp_path / "results")
    records = results.run_table(FAKE, root, cwd=ROOT, log=lambda *_: None)
    assert [r["seed"] for r in records] == [0, 1, 2]
    assert [r["metrics"] for r in records] == [{"score": 2.0, "x": 0}, {"score": 3.5, "x": -1}, {"score": 5.0, "x": -2}]
    path = results.write_table(FAKE, records, out, cwd=ROOT)
    assert path == os.path.join(out, "fake.json")
    got = json.load(open(path))
    assert set(got) == {"table", "title", "commit", "dirty", "seed_commits", "commands", "seeds", "per_seed", "mean",
                        "std", "paper", "paper_source", "threads", "wall_s", "notes", "digits"}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert got["commit"] == head and isinstance(got["dirty"], bool)
    assert got["seed_commits"] == {"0": head, "1": head, "2": head}
    assert got["commands"] == [["{python}", "-c", _WRITE, "{seed}", "{out}"]]
    assert got["seeds"] == [0, 1, 2]
    assert got["per_seed"] == {"0": {"score": 2.0, "x": 0}, "1": {"score": 3.5, "x": -1}, "2": {"score": 5.0, "x": -2}}
    for column, values in (("score", [2.0, 3.5, 5.0]), ("x", [0, -1, -2])):
        assert got["mean"][column] == pytest.approx(np.mean(values))
        assert got["std"][column] == pytest.approx(np.std(values, ddof=1))
    assert got["paper"] == {"score": 4.0}
    assert all(isinstance(t, int) and t >= 1 for t in got["threads"].values())
    assert all(w >= 0 for w in got["wall_s"].values())
    # the exact commands of a seed are kept with its record
    seed1 = json.load(open(os.path.join(root, "fake", "seed1", "result.json")))
    assert seed1["commands"][0][-2:] == ["1", os.path.join(root, "fake", "seed1")]
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]  # written atomically, nothing left over


def test_finished_seeds_are_skipped_unless_forced(tmp_path):
    root = str(tmp_path / "runs")
    quiet = lambda *_: None  # noqa: E731
    results.run_table(FAKE, root, cwd=ROOT, seeds=[0, 1], log=quiet)
    assert [_calls(root, s) for s in (0, 1, 2)] == [1, 1, 0]
    records = results.run_table(FAKE, root, cwd=ROOT, log=quiet)  # 0 and 1 reused, 2 run
    assert [_calls(root, s) for s in (0, 1, 2)] == [1, 1, 1]
    assert [r["seed"] for r in records] == [0, 1, 2]
    results.run_table(FAKE, root, cwd=ROOT, seeds=[1], force=True, log=quiet)
    assert [_calls(root, s) for s in (0, 1, 2)] == [1, 2, 1]
    # rerunning one seed keeps the others in the table
    assert [r["seed"] for r in results.run_table(FAKE, root, cwd=ROOT, seeds=[2], log=quiet)] == [0, 1, 2]


def test_failed_seed_raises_and_is_not_marked_finished(tmp_path):
    broken = Table(name="broken", title="", commands=(("{python}", "-c", "import sys; print('boom'); sys.exit(3)"),),
                   reader="json", result_file="metric.json", metrics=(("score", "score"),), seeds=(0,))
    with pytest.raises(results.ResultsError, match=r"(?s)exited with 3.*boom"):
        results.run_table(broken, str(tmp_path), cwd=ROOT, log=lambda *_: None)
    assert not os.path.exists(tmp_path / "broken" / "seed0" / "result.json")
    missing = Table(name="missing", title="", commands=(("{python}", "-c", "pass"),), reader="json",
                    result_file="metric.json", metrics=(("score", "score"),), seeds=(0,))
    with pytest.raises(results.ResultsError, match="wrote no"):
        results.run_table(missing, str(tmp_path), cwd=ROOT, log=lambda *_: None)


RESULT = {
    "table": "fake", "title": "A fake table", "commit": "0123456789abcdef", "dirty": True,
    "commands": [["{python}", "tools/x.py", "DATASETS.TEST", '("a_test",)', "SEED", "{seed}"]], "seeds": [0, 1],
    "per_seed": {"0": {"mIoU": 90.04, "PQ": 70.0}, "1": {"mIoU": 91.36, "PQ": None}},
    "mean": {"mIoU": 90.7, "PQ": 70.0}, "std": {"mIoU": 0.9334, "PQ": 0.0},
    "paper": {"mIoU": 47.2}, "paper_source": "Mask2Former R50, ADE20K", "threads": {"0": 2, "1": 1},
    "wall_s": {"0": 230.4, "1": 545.6}, "notes": "", "digits": 1,
}
EXPECTED_MARKDOWN = """\
| metric | ours: mean ± std over seeds 0, 1 | per seed | paper |
|---|---|---|---|
| mIoU | 90.7 ± 0.9 | 90.0, 91.4 | 47.2 |
| PQ | 70.0 ± 0.0 | 70.0, - | - |

A fake table. Commit 0123456 (uncommitted changes); 1, 2 thread(s); wall time per seed 230 s, 546 s.
Commands (per seed): `{python} tools/x.py DATASETS.TEST '("a_test",)' SEED {seed}`.
Paper: Mask2Former R50, ADE20K.
"""


def test_markdown_rendering():
    assert results.render_markdown(RESULT) == EXPECTED_MARKDOWN


def test_an_incremental_table_renders_one_row_per_method():
    columns = {"MiB old": (60.0, 62.0), "MiB new": (40.0, 50.0), "MiB all": (55.0, 58.0), "Joint all": (70.0, None)}
    result = dict(RESULT, seeds=[0, 1], notes="", paper_source="",
                  per_seed={str(s): {c: v[s] for c, v in columns.items() if v[s] is not None} for s in (0, 1)},
                  mean={"MiB old": 61.0, "MiB new": 45.0, "MiB all": 56.5, "Joint all": 70.0},
                  std={"MiB old": 1.4142, "MiB new": 7.0711, "MiB all": 2.1213, "Joint all": 0.0},
                  paper={"MiB old": 75.5, "MiB all": 69.0})
    table = results.render_markdown(result).split("\n\n")[0]
    assert table == """\
| method | old: mean ± std over seeds 0, 1 | new | all | all, per seed | paper: old / new / all |
|---|---|---|---|---|---|
| MiB | 61.0 ± 1.4 | 45.0 ± 7.1 | 56.5 ± 2.1 | 55.0, 58.0 | 75.5 / - / 69.0 |
| Joint | - | - | 70.0 ± 0.0 | 70.0, - | - |"""
    # a column outside the pattern keeps the one-row-per-metric layout
    flat = dict(result, mean={**result["mean"], "CLIP top-1": 0.5}, std={**result["std"], "CLIP top-1": 0.0})
    assert results.render_markdown(flat).startswith("| metric |")


def test_a_zero_shot_table_renders_one_row_per_variant():
    per_seed = {"0": {"PADing mIoU seen": 70.0, "PADing mIoU unseen": 4.0, "PADing PQ unseen": 0.0,
                      "GMMN mIoU unseen": 2.0},
                "1": {"PADing mIoU seen": 68.0, "PADing mIoU unseen": 2.0, "PADing PQ unseen": 0.0,
                      "GMMN mIoU unseen": 3.0}}
    result = dict(RESULT, seeds=[0, 1], notes="", paper_source="", per_seed=per_seed,
                  mean={"PADing mIoU seen": 69.0, "PADing mIoU unseen": 3.0, "PADing PQ unseen": 0.0,
                        "GMMN mIoU unseen": 2.5},
                  std={"PADing mIoU seen": 1.4142, "PADing mIoU unseen": 1.4142, "PADing PQ unseen": 0.0,
                       "GMMN mIoU unseen": 0.7071},
                  paper={"PADing mIoU seen": 40.6, "PADing PQ unseen": 14.4})
    table = results.render_markdown(result).split("\n\n")[0]
    assert table == """\
| method | mIoU seen: mean ± std over seeds 0, 1 | mIoU unseen | hIoU | PQ seen | PQ unseen | PQ HM | mIoU unseen, \
per seed | paper: mIoU seen / mIoU unseen / hIoU / PQ seen / PQ unseen / PQ HM |
|---|---|---|---|---|---|---|---|---|
| PADing | 69.0 ± 1.4 | 3.0 ± 1.4 | - | - | 0.0 ± 0.0 | - | 4.0, 2.0 | 40.6 / - / - / - / 14.4 / - |
| GMMN | - | 2.5 ± 0.7 | - | - | - | - | 2.0, 3.0 | - |"""


def test_readme_block_replacement(tmp_path):
    text = "# Title\n\nintro\n<!-- results:fake -->\nold line 1\nold line 2\n<!-- /results:fake -->\nafter\n"
    expected = "# Title\n\nintro\n<!-- results:fake -->\n| a |\n|---|\n<!-- /results:fake -->\nafter\n"
    assert results.replace_block(text, "fake", "| a |\n|---|\n") == expected
    assert results.replace_block(expected, "fake", "| a |\n|---|") == expected  # idempotent
    with pytest.raises(results.ResultsError, match="exactly one"):
        results.replace_block("no markers here", "fake", "x")
    with pytest.raises(results.ResultsError, match="exactly one"):
        results.replace_block(text + text, "fake", "x")
    # from a results file to the README, by file
    readme, results_dir = tmp_path / "README.md", tmp_path / "results"
    readme.write_text(text)
    results_dir.mkdir()
    (results_dir / "fake.json").write_text(json.dumps(RESULT))
    results.update_readme(str(readme), "fake", results.table_markdown("fake", str(results_dir)))
    assert readme.read_text() == text.replace("old line 1\nold line 2\n", EXPECTED_MARKDOWN)


def test_readers_on_hand_written_files(tmp_path):
    """detectron2's metrics.json (last value of a key wins), run_incremental's summary.json (the last step's rows)
    and a bench log (its last JSON line)."""
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"iteration": 0, "total_loss": 3.0}\n{"iteration": 9, "total_loss": 1.0, "sem_seg/mIoU": 55.5}\n')
    assert results.READERS["detectron2_metrics"](str(metrics)) == {"iteration": 9, "total_loss": 1.0, "sem_seg/mIoU": 55.5}
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"task": "t", "steps": [
        {"method": "MiB", "step": 0, "mIoU_old": 80.0, "mIoU_new": None, "mIoU_all": 80.0},
        {"method": "MiB", "step": 1, "mIoU_old": 70.0, "mIoU_new": 40.0, "mIoU_all": 60.0},
        {"method": "Joint", "step": 1, "mIoU_old": 75.0, "mIoU_new": 65.0, "mIoU_all": 72.0}]}))
    assert results.READERS["incremental_summary"](str(summary)) == {
        "MiB/mIoU_old": 70.0, "MiB/mIoU_new": 40.0, "MiB/mIoU_all": 60.0,
        "Joint/mIoU_old": 75.0, "Joint/mIoU_new": 65.0, "Joint/mIoU_all": 72.0}
    log = tmp_path / "command0.log"
    log.write_text('loading\n{"a": 1}\n{"clip_zero_shot_top1": 0.9, "x": {"y": 2}}\ndone\n')
    assert results.READERS["last_json_line"](str(log)) == {"clip_zero_shot_top1": 0.9, "x/y": 2}
    variants = tmp_path / "summary.json"
    variants.write_text(json.dumps({"config": "c.yaml", "metrics": ["sem_seg/mIoU"], "rows": [
        {"variant": "DuPL", "dataset": "test", "sem_seg/mIoU": 60.0},
        {"variant": "FullySupervised", "dataset": "test", "sem_seg/mIoU": 75.0},
        {"variant": "NoGMM", "dataset": "test", "sem_seg/mIoU": None}]}))
    got = results.READERS["variants_summary"](str(variants))
    assert got == pytest.approx({"DuPL/test/sem_seg/mIoU": 60.0, "FullySupervised/test/sem_seg/mIoU": 75.0,
                                 "DuPL % of FullySupervised/test/sem_seg/mIoU": 80.0,  # 60 / 75
                                 "FullySupervised % of DuPL/test/sem_seg/mIoU": 125.0})
    folder = tmp_path / "pseudo_labels"
    folder.mkdir()
    (folder / "CoSegmentation.json").write_text('{"source": "CoSegmentation", "metrics": {"mIoU_labelled": 51.7}}')
    (folder / "Localizer.json").write_text('{"metrics": {"mIoU_labelled": 9.4, "IoU": {"heart": 16.2}}}')
    (folder / "notes.txt").write_text("not read")
    assert results.READERS["json_folder"](str(folder)) == {
        "CoSegmentation/source": "CoSegmentation", "CoSegmentation/metrics/mIoU_labelled": 51.7,
        "Localizer/metrics/mIoU_labelled": 9.4, "Localizer/metrics/IoU/heart": 16.2}
    with pytest.raises(results.ResultsError, match="not a folder"):
        results.READERS["json_folder"](str(folder / "Localizer.json"))


def test_builtin_tables_point_at_real_files():
    """Every registered table reads with a known reader, runs files of this checkout and shows paper numbers only
    for its own columns."""
    assert {"mask2former_semantic", "mask2former_panoptic", "mib_deeplabv3_6-4", "mib_deeplabv3_6-2-2",
            "mib_mask2former_6-4", "foundation", "fmwiss_6-4", "fmwiss_pseudo_labels"} <= set(results.TABLES)
    for table in results.TABLES.values():
        assert table.reader in results.READERS and table.seeds == (0, 1, 2)
        assert set(table.paper) <= {c for c, _ in table.metrics}
        for argv in table.argv(0, "/tmp/out"):
            assert os.path.isfile(os.path.join(ROOT, argv[1])), argv
            if "--config-file" in argv:
                assert os.path.isfile(os.path.join(ROOT, argv[argv.index("--config-file") + 1]))


def test_readme_tables_are_the_committed_results_files():
    """Every ``results/<table>.json`` of the repository appears in the README exactly as rendered from the file
    (regenerate with ``tools/reproduce.py --update-readme TABLE``)."""
    import glob
    import json
    import os

    from fmwiss_d2.utils.results import render_markdown, replace_block

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md")).read()
    for path in sorted(glob.glob(os.path.join(root, "results", "*.json"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if name == "gpu":  # written by tools/bench/gpu_check.sh, not a results table
            continue
        with open(path) as f:
            block = render_markdown(json.load(f))
        assert replace_block(readme, name, block) == readme, f"README's {name} table differs from {path}"


def _git_repo(path):
    """A git repository at ``path`` with a committed ``code.py`` and ``results/t.json``; returns its HEAD."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (path / "results").mkdir()
    (path / "results" / "t.json").write_text("{}")
    (path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return git("rev-parse", "HEAD")


def test_git_state_ignores_the_tables_own_files(tmp_path):
    """A seed that finishes while another seed's table file was just written is still clean; any other change is not."""
    _git_repo(tmp_path)
    assert results.git_state(str(tmp_path))["dirty"] is False
    (tmp_path / "results" / "t.json").write_text('{"a": 1}')
    assert results.git_state(str(tmp_path))["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert results.git_state(str(tmp_path))["dirty"] is True


def test_a_seed_records_the_tree_its_commands_started_from(tmp_path):
    """An edit made while a seed runs (here by its own command) does not mark that seed's numbers as coming from
    uncommitted code; the checkout is dirty afterwards."""
    head = _git_repo(tmp_path)
    edit = ("import sys, json; open('code.py', 'w').write('x = 2\\n'); "
            "json.dump({'score': 1.0}, open(sys.argv[1] + '/metric.json', 'w'))")
    table = Table(name="edit", title="edits a tracked file", commands=(("{python}", "-c", edit, "{out}"),),
                  reader="json", result_file="metric.json", metrics=(("score", "score"),), seeds=(0,))
    record = results.run_seed(table, 0, str(tmp_path / "runs"), cwd=str(tmp_path), log=lambda *_: None)
    assert (tmp_path / "code.py").read_text() == "x = 2\n" and results.git_state(str(tmp_path))["dirty"] is True
    assert record["commit"] == head and record["dirty"] is False


def test_the_table_state_comes_from_its_seeds(tmp_path):
    """A table is clean when every seed ran from the same clean commit, whatever the checkout holds when the table
    is written; one seed from uncommitted code, or seeds from different commits, mark it dirty."""
    head = _git_repo(tmp_path)
    (tmp_path / "code.py").write_text("x = 3\n")  # the checkout is dirty now

    def state(*seeds):
        records = [{"seed": i, "metrics": {"score": 1.0}, "commit": c, "dirty": d} for i, (c, d) in enumerate(seeds)]
        got = results.summarize(FAKE, records, cwd=str(tmp_path))
        return got["commit"], got["dirty"]

    assert state(("a" * 40, False), ("a" * 40, False)) == ("a" * 40, False)
    assert state(("a" * 40, False), ("a" * 40, True)) == ("a" * 40, True)
    assert state(("a" * 40, False), ("b" * 40, False)) == (head, True)
    assert state((None, None), (None, None)) == (None, None)  # seeds run outside a git checkout

