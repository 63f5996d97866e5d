"""`make bench`: run the benchmarks, print JSON lines, write benchmarks/results/<bench>.json.

python benchmarks/run.py                        # all of them (about 15 min on 2 CPU cores)
python benchmarks/run.py --only frozen,memory   # some of them
python benchmarks/run.py --quick                # fewer repeats and steps: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_compile
import bench_data
import bench_distill
import bench_frozen
import bench_fsdp
import bench_memory
import bench_overhead
import bench_peft
import bench_startup
import bench_sweep_cache
import bench_syncs
from common import quiet, write_results

BENCHES = {
    "overhead": bench_overhead.run,
    "frozen": bench_frozen.run,
    "memory": bench_memory.run,
    "startup": bench_startup.run,
    "syncs": bench_syncs.run,
    "sweep_cache": bench_sweep_cache.run,
    "peft": bench_peft.run,
    "distill": bench_distill.run,
    "compile": bench_compile.run,
    "fsdp": bench_fsdp.run,
    "data": bench_data.run,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated: {','.join(BENCHES)}")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}: choose from {', '.join(BENCHES)}")
    quiet()
    for name in names:
        start = time.perf_counter()
        records = BENCHES[name](quick=args.quick)
        seconds = time.perf_counter() - start
        path = write_results(name, records, quick=args.quick, seconds=round(seconds, 1))
        print(f"# {name}: {seconds:.0f} s, wrote {path}", flush=True)


if __name__ == "__main__":
    main()
