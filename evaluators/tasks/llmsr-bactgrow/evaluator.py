"""LLM-SR bactgrow: fit the equation's 10 params with BFGS on train.csv, score the training
MSE, report NMSE on train, test_id and test_ood. The fit is shared by the three LLM-SR
tasks and lives beside the task folders, in ../llmsr_fit.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from llmsr_fit import fit_and_score  # noqa: E402


def evaluate(program_path, data_dir):
    """data_dir: the LLM-SR data folder, holding bactgrow/{train,test_id,test_ood}.csv."""
    return fit_and_score(program_path, data_dir, "bactgrow")
