import numpy as np


# EVOLVE-BLOCK-START
def equation(t, x, v, params):
    """Acceleration of a damped nonlinear oscillator.

    t: time, x: position, v: velocity (numpy arrays of equal length); params: 10 constants
    fitted by the evaluator (BFGS from all ones). Returns the predicted target array.
    """
    return params[0] * t + params[1] * x + params[2] * v + params[3]
# EVOLVE-BLOCK-END
