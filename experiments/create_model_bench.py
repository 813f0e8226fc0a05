"""How long ``timm.create_model`` of each shipped hmnas model takes, built from its document against through a supernet.

    python -m hmnas_nni.experiments.create_model_bench [--repeats 5]

Each model name is built in a fresh Python process per path, after the imports (``timm``, ``hmnas_nni.export``,
NNI), which are timed apart: ``build`` is the library's path (the document and the space, no supernet); ``supernet``
forces what every build did before, an HM-NAS supernet of the space mutated by ``HMNAS.mutate_model``, one pass to
learn removed edges' shapes, then cut up. Printed per name and path: the import time, the first call, the median of
the next ``repeats`` calls, the growth of the process's peak resident memory during the first call, and how many
supernets were made.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PATHS = ("build", "supernet")

#: Run in the child process: time one name along one path and print the figures as JSON.
_CHILD = """
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
start = time.perf_counter()
import timm
import hmnas_nni.export
from hmnas_nni.nas import rebuild
imported = time.perf_counter() - start
name, path, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
made = []
make = rebuild.supernet_of
rebuild.supernet_of = lambda arch: made.append(1) or make(arch)
if path == "supernet":
    rebuild.built_network = lambda arch: None
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
timm.create_model(name)
first = time.perf_counter() - t
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
times = []
for _ in range(repeats):
    t = time.perf_counter()
    timm.create_model(name)
    times.append(time.perf_counter() - t)
print(json.dumps({"import_s": imported, "first_s": first, "times_s": times, "peak_mb": grown,
                  "supernets": len(made) / (repeats + 1)}))
"""


def measure(name: str, path: str, repeats: int) -> dict[str, float]:
    """The figures of one model name built along one path, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", _CHILD, name, path, str(repeats)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} ({path}) failed: {done.stderr.strip().splitlines()[-1]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["median_s"] = statistics.median(row.pop("times_s"))
    return row


def names() -> list[str]:
    """``hmnas`` and every shipped ``hmnas_<name>``."""
    from hmnas_nni.export.hmnas_timm import SHIPPED

    return ["hmnas", *SHIPPED]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="calls after the first, their median reported")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: pass 1 or more")
    print("| model | path | import s | first call s | median s | peak memory +MB | supernets per call |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = {}
    started = time.perf_counter()
    for name in names():
        for path in PATHS:
            r = rows[name, path] = measure(name, path, args.repeats)
            print(f"| {name} | {path} | {r['import_s']:.2f} | {r['first_s']:.3f} | {r['median_s']:.3f} | "
                  f"{r['peak_mb']:.1f} | {r['supernets']:g} |", flush=True)
    for name in names():
        b, s = rows[name, "build"], rows[name, "supernet"]
        print(f"{name}: build / supernet = {b['first_s'] / s['first_s']:.2f}x first call, "
              f"{b['median_s'] / s['median_s']:.2f}x median")
    print(f"({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
