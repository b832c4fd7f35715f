#!/usr/bin/env python
"""Regenerates a results table: runs its seeds (skipping finished ones), writes results/TABLE.json.

    python tools/reproduce.py --list                         # the tables and their commands
    python tools/reproduce.py mask2former_semantic           # run seeds 0, 1, 2 (finished seeds are reused)
    python tools/reproduce.py mask2former_semantic --seeds 0 --force   # rerun seed 0 from scratch
    python tools/reproduce.py --markdown mask2former_semantic          # print results/TABLE.json as Markdown
    python tools/reproduce.py --update-readme mask2former_semantic     # ... and put it between the README markers
    python tools/reproduce.py mib_deeplabv3_6-4 --seeds 0 --results-dir /tmp/r --output-root /tmp/o \
        --config-overrides "SOLVER.MAX_ITER 2"          # a quick check of the plumbing, not a result

Tables, readers and the file layout: fmwiss_d2/utils/results.py.
"""
import argparse
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

from fmwiss_d2.utils import results  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="*", help=f"table names ({', '.join(results.TABLES)}) or 'all'")
    p.add_argument("--list", action="store_true", help="print the tables and their commands")
    p.add_argument("--seeds", default="", help="comma-separated subset of the table's seeds")
    p.add_argument("--force", action="store_true", help="rerun seeds even when their result exists")
    p.add_argument("--output-root", default=os.path.join(ROOT, "output", "results"), help="where the runs go")
    p.add_argument("--results-dir", default=os.path.join(ROOT, "results"), help="where TABLE.json goes")
    p.add_argument("--markdown", action="store_true", help="print results/TABLE.json as Markdown (runs nothing)")
    p.add_argument("--update-readme", action="store_true", help="also replace the README's block of the table")
    p.add_argument("--config-overrides", default="", metavar="'KEY VALUE ...'",
                   help="appended to the commands of train_net.py / run_incremental.py (quick checks; the JSON "
                        "records them in its commands)")
    args = p.parse_args(argv)
    if args.list:
        for t in results.TABLES.values():
            print(f"{t.name}: {t.title}\n  seeds {list(t.seeds)}: " + "\n  ".join(results.shell_command(c) for c in t.commands))
        return
    names = list(results.TABLES) if args.tables == ["all"] else args.tables
    unknown = [n for n in names if n not in results.TABLES]
    if not names or unknown:
        p.error(f"unknown or missing table {unknown or ''}; known: {', '.join(results.TABLES)} (or 'all')")
    try:
        for name in names:
            run(name, args)
    except results.ResultsError as e:
        sys.exit(f"reproduce.py: {e}")


def run(name, args):
    """One table: render it (--markdown / --update-readme) or run its seeds and write results/NAME.json."""
    table = results.TABLES[name]
    if args.markdown or args.update_readme:
        text = results.table_markdown(name, args.results_dir)
        print(text)
        if args.update_readme:
            results.update_readme(os.path.join(ROOT, "README.md"), name, text)
        return
    seeds = [int(s) for s in args.seeds.split(",") if s] or None
    records = results.run_table(table, args.output_root, cwd=ROOT, seeds=seeds, force=args.force,
                                overrides=shlex.split(args.config_overrides))
    print(f"written: {results.write_table(table, records, args.results_dir, cwd=ROOT)}")


if __name__ == "__main__":
    main()
