"""Fit the program's equation(x, params) to y = 0.5 x^2 - 2 sin(x) + 1 and score the error.

The params enter linearly, so least squares fits them exactly on x in [-3, 3]; the score
is the mean squared error there. nmse_id and nmse_ood are the normalised errors on held-out
points inside and outside that range (tagsmith shows both in its summaries).
"""

import importlib.util

import numpy as np

N_PARAMS = 10


def truth(x):
    return 0.5 * x**2 - 2 * np.sin(x) + 1


def evaluate(program_path):
    spec = importlib.util.spec_from_file_location("program", program_path)
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)  # an exception here or below fails the candidate ("error")

    def predict(x, params):
        return np.broadcast_to(np.asarray(program.equation(x, params), dtype=float), x.shape)

    x = np.linspace(-3, 3, 61)
    base = predict(x, np.zeros(N_PARAMS))  # the part without params; then one column per param
    design = np.stack([predict(x, np.eye(N_PARAMS)[i]) - base for i in range(N_PARAMS)], axis=1)
    if not (np.isfinite(base).all() and np.isfinite(design).all()):
        return {"error": "equation(x, params) is not finite on [-3, 3]"}
    probe = np.random.default_rng(0).normal(size=N_PARAMS)
    if not np.allclose(predict(x, probe), base + design @ probe, rtol=1e-6, atol=1e-9):
        return {"error": "equation(x, params) is not linear in params: write a sum of params[i] * term"}
    params, *_ = np.linalg.lstsq(design, truth(x) - base, rcond=None)
    metrics = {"mse": float(np.mean((base + design @ params - truth(x)) ** 2)), "params": params.tolist()}
    for key, xs in (("nmse_id", np.linspace(-2.95, 2.95, 40)), ("nmse_ood", np.linspace(3, 5, 40))):
        metrics[key] = float(np.mean((predict(xs, params) - truth(xs)) ** 2) / np.var(truth(xs)))
    return metrics
