"""Issue 9's chaos table: every scenario against a real hub, proxy and single-user servers, with the
emulator injecting outages, holds and SIGKILLs (the same code as tests/chaos, which asserts it).

Prints one row per scenario, ``scenario orphans_after_grace duplicates servers_lost login_ok
secrets_left``, the goal being ``0 0 0 yes 0`` everywhere, then what went wrong in any other row,
and the run's seconds. Loopback only; no root needed.

Run: `.venv/bin/python benchmarks/chaos.py [--workdir DIR]` (default: a temporary directory,
kept when a row fails so its hub.log and instance logs can be read).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "chaos"))
from chaos_lab import format_table, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where the hub, emulator and instance logs go")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ec2hub-chaos-"))
    rows, seconds = run(workdir, log=lambda message: print(f"chaos: {message}", file=sys.stderr, flush=True))
    print(format_table(rows))
    print(f"runtime_s={seconds:.0f}")
    failed = [row for row in rows if not row.ok]
    for row in failed:
        print(f"\n{row.scenario}:\n  " + "\n  ".join(row.notes))
    if failed:
        print(f"\nlogs kept in {workdir}")
    elif args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
