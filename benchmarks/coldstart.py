"""Cold start: a new Python process imports, loads the model and predicts once.

The child reports its own phase times and peak RSS: ``VmHWM`` from
/proc/self/status, the high-water mark of its resident memory. (``ru_maxrss``
is recorded too but not used: Linux carries it across ``execve``, and Python
starts children with vfork, so a child's ``ru_maxrss`` is at least the
benchmark parent's.) The parent adds the wall time of the whole process,
interpreter start-up and exit included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.inputs import REPO

__all__ = ["CHILDREN", "cold_start"]

_PRELUDE = """
import json, os, resource, sys, time
t0 = time.perf_counter()
"""

_REPORT = """
t3 = time.perf_counter()
hwm = 0
with open("/proc/self/status") as status:
    for line in status:
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2,
                  "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "vmhwm_kib": hwm,
                  "probability": float(p)}))
"""

#: What each child does, between the prelude and the report.
CHILDREN = {
    "keras load_model + predict": """
import keras_attn
t1 = time.perf_counter()
model = keras_attn.load_model(sys.argv[1])
t2 = time.perf_counter()
p = model.predict(model.text_encoder.encode([sys.argv[2]]), verbose=0)["probability"][0, 0]
""",
    "runtime SentimentPredictor": """
from export.runtime import SentimentPredictor
t1 = time.perf_counter()
predictor = SentimentPredictor(sys.argv[1])
t2 = time.perf_counter()
p = predictor.predict_proba([sys.argv[2]])[0]
""",
}


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def cold_start(kind: str, model_path, sentence: str, repeats: int) -> dict:
    """Median wall time and phases, and the largest peak RSS, over ``repeats`` new processes."""
    code = _PRELUDE + CHILDREN[kind] + _REPORT
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", code, str(model_path), sentence],
            capture_output=True, text=True, env=_child_env(), cwd=str(REPO), timeout=300,
        )
        wall = time.perf_counter() - t
        if done.returncode != 0:
            tail = " ".join(done.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"cold start '{kind}' failed (exit {done.returncode}): {tail[-400:]}")
        record = json.loads(done.stdout.strip().splitlines()[-1])
        record["wall_s"] = wall
        runs.append(record)
    median = {key: float(np.median([r[key] for r in runs])) for key in ("wall_s", "import_s", "load_s", "first_predict_s")}
    peak = max(r["vmhwm_kib"] for r in runs)
    return {**median, "peak_rss_mib": peak / 1024, "repeats": repeats, "runs": runs}
