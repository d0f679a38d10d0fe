"""circle-packing: 26 circles in the unit square. The program's construct_packing() returns
(centers, radii); the score is the sum of the radii (higher is better; AlphaEvolve's 2.635
is the target) once the packing is valid: every circle inside [0, 1]^2 and no two
overlapping, with a tolerance of 1e-9. An invalid packing is reported as an error."""

import importlib.util
import os
import sys

import numpy as np


def _load_program(path):
    spec = importlib.util.spec_from_file_location("program", os.path.abspath(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules["program"] = module
    spec.loader.exec_module(module)
    return module


def evaluate(program_path, n=26, tol=1e-9):
    out = _load_program(program_path).construct_packing()
    if not isinstance(out, (tuple, list)) or len(out) < 2:
        return {"error": "construct_packing() must return (centers, radii)"}
    try:
        centers = np.asarray(out[0], dtype=float)
        radii = np.asarray(out[1], dtype=float)
    except (TypeError, ValueError) as exc:
        return {"error": "centers and radii must be numeric arrays: %s" % exc}
    if centers.shape != (n, 2) or radii.shape != (n,):
        return {"error": "expected centers of shape (%d, 2) and radii of shape (%d,), got %s and %s"
                % (n, n, centers.shape, radii.shape)}
    if not (np.isfinite(centers).all() and np.isfinite(radii).all()):
        return {"error": "centers or radii hold NaN or infinity"}
    total = float(radii.sum())
    bad = np.flatnonzero(radii < 0)
    if bad.size:
        return {"error": "circle %d has a negative radius %.3g" % (bad[0], radii[bad[0]]),
                "sum_radii": total}
    # How far each circle sticks out of [0, 1]^2 (positive = outside).
    out_by = np.max(np.stack([radii - centers[:, 0], centers[:, 0] + radii - 1,
                              radii - centers[:, 1], centers[:, 1] + radii - 1]), axis=0)
    i = int(np.argmax(out_by))
    if out_by[i] > tol:
        return {"error": "circle %d (center (%.6g, %.6g), radius %.6g) is outside the unit square by %.3g"
                % (i, centers[i, 0], centers[i, 1], radii[i], out_by[i]), "sum_radii": total}
    gap = np.linalg.norm(centers[:, None, :] - centers[None, :, :], axis=-1) - (radii[:, None] + radii[None, :])
    gap[np.diag_indices(n)] = np.inf
    i, j = np.unravel_index(int(np.argmin(gap)), gap.shape)
    if gap[i, j] < -tol:
        return {"error": "circles %d and %d overlap by %.3g" % (min(i, j), max(i, j), -gap[i, j]),
                "sum_radii": total}
    return {"sum_radii": total, "min_radius": float(radii.min()), "max_radius": float(radii.max()),
            "min_gap": float(gap.min()), "target_ratio": total / 2.635}
