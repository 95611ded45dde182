"""Writes what this worker sees (environment, argv, __main__ layout) to OUT/env.<attempt>.<rank>.json.

    record_env.py OUT [--fail-first-attempt]

With --fail-first-attempt, rank 0 exits 1 on attempt 0 once every rank has recorded, so that
attempt 1 (a restart) records too.
"""
import json
import os
import sys
import time

out = sys.argv[1]
rank = os.environ["RANK"]
attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
seen = {
    "env": dict(os.environ),
    "argv": sys.argv,
    "file": __file__,
    "name": __name__,
    "path0": sys.path[0],
    "main_globals": sorted(k for k in globals() if k not in ("json", "os", "sys", "time")),
    "pid": os.getpid(),
    # What the interpreter had loaded when the program began (the standby's boot must add
    # nothing, ours above all); the imports above are the same in every run.
    "modules": sorted(sys.modules),
}
tmp = os.path.join(out, f".env.{attempt}.{rank}.json")
with open(tmp, "w") as f:
    json.dump(seen, f)
os.replace(tmp, os.path.join(out, f"env.{attempt}.{rank}.json"))
if "--fail-first-attempt" in sys.argv and rank == "0" and attempt == "0":
    world = int(os.environ["WORLD_SIZE"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(os.path.exists(os.path.join(out, f"env.0.{r}.json")) for r in range(world)):
            break
        time.sleep(0.01)
    sys.exit(1)
