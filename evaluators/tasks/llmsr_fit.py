"""The LLM-SR fit and metrics, shared by the three LLM-SR task folders (llmsr-oscillator1,
llmsr-oscillator2, llmsr-bactgrow), whose evaluator.py imports it from here.

The program defines ``equation(<inputs...>, params)``; its up to ``max_params`` constants
are fitted with ``scipy.optimize.minimize(loss, np.ones(max_params), method="BFGS")`` on
``<data_dir>/<problem>/train.csv`` (inputs in the first columns, the target last). The
score is the fitted training MSE; the metrics add NMSE = MSE / var(y) on train, test_id
and test_ood (with the fitted params) and their log10.
"""

import importlib.util
import os
import sys
import warnings

import numpy as np


def _load_program(path):
    spec = importlib.util.spec_from_file_location("program", os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules["program"] = module
    spec.loader.exec_module(module)
    return module


def _load(data_dir, problem, split):
    data = np.loadtxt(os.path.join(data_dir, problem, split + ".csv"), delimiter=",", skiprows=1)
    return data[:, :-1], data[:, -1]


def fit_and_score(program_path, data_dir, problem, max_params=10):
    from scipy.optimize import minimize

    equation = getattr(_load_program(program_path), "equation", None)
    if not callable(equation):
        return {"error": "the program defines no function equation(...)"}
    X, y = _load(data_dir, problem, "train")

    def predict(X, params):
        pred = np.asarray(equation(*X.T, params), dtype=float)
        # A (n, 1) prediction would broadcast against y into an n x n matrix: refuse it.
        if pred.shape not in ((), (len(X),)):
            raise ValueError("equation returned shape %s; expected (%d,)" % (pred.shape, len(X)))
        return np.broadcast_to(pred, (len(X),))

    predict(X, np.ones(max_params))  # fail fast, with the program's own exception

    def loss(params):
        with np.errstate(all="ignore"):
            return float(np.mean((predict(X, params) - y) ** 2))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = minimize(loss, np.ones(max_params), method="BFGS")
    params = fit.x
    mse = loss(params)
    if not np.isfinite(mse):
        return {"error": "the fitted training MSE is not finite (%s)" % mse}
    metrics = {"mse": mse, "nmse_train": mse / float(np.var(y)), "params": params.tolist(),
               "bfgs_iterations": int(fit.nit)}
    for split, key in (("test_id", "id"), ("test_ood", "ood")):
        Xs, ys = _load(data_dir, problem, split)
        with np.errstate(all="ignore"):
            nmse = float(np.mean((predict(Xs, params) - ys) ** 2) / np.var(ys))
        metrics["nmse_" + key] = nmse
    for key in ("train", "id", "ood"):
        v = metrics["nmse_" + key]
        # Floor at 1e-300 so an exact fit reads -300, not -inf; NaN/inf stay as they are.
        metrics["log10_nmse_" + key] = float(np.log10(max(v, 1e-300))) if np.isfinite(v) else v
    return metrics
