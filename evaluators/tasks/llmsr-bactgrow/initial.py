import numpy as np


# EVOLVE-BLOCK-START
def equation(b, s, temp, pH, params):
    """E. coli population growth rate.

    b: population density, s: substrate concentration, temp: temperature, pH: pH (numpy arrays of equal length); params: 10 constants
    fitted by the evaluator (BFGS from all ones). Returns the predicted target array.
    """
    return params[0] * b + params[1] * s + params[2] * temp + params[3] * pH + params[4]
# EVOLVE-BLOCK-END
