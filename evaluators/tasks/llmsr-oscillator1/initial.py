import numpy as np


# EVOLVE-BLOCK-START
def equation(x, v, params):
    """Acceleration of a damped nonlinear oscillator with a driving force.

    x: position, v: velocity (numpy arrays of equal length); params: 10 constants
    fitted by the evaluator (BFGS from all ones). Returns the predicted target array.
    """
    return params[0] * x + params[1] * v + params[2]
# EVOLVE-BLOCK-END
