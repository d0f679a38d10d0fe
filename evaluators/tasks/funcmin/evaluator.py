"""funcmin: the value of f(x, y) = sin x cos y + sin(xy) + (x^2 + y^2)/20 at the point the
program's search_algorithm() returns (lower is better; the minimum is about -1.519, near
(-1.704, 0.678))."""

import importlib.util
import math
import os
import sys


def _load_program(path):
    spec = importlib.util.spec_from_file_location("program", os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules["program"] = module
    spec.loader.exec_module(module)
    return module


def f(x, y):
    return math.sin(x) * math.cos(y) + math.sin(x * y) + (x * x + y * y) / 20.0


def evaluate(program_path):
    out = _load_program(program_path).search_algorithm()
    try:
        x, y = float(out[0]), float(out[1])  # (x, y) or (x, y, value): the value is recomputed
    except (TypeError, ValueError, IndexError) as exc:
        return {"error": f"search_algorithm() must return (x, y) numbers: {exc}"}
    if not (math.isfinite(x) and math.isfinite(y)):
        return {"error": f"search_algorithm() returned a non-finite point ({x!r}, {y!r})"}
    return {"value": f(x, y), "x": x, "y": y,
            "distance_to_optimum": math.hypot(x + 1.704, y - 0.678)}
