"""Closed-form global minimizers of the deep linear UFM (theory.md)."""

from nclab.theory.objective import labels_from_counts, ufm_objective, ufm_objective_torch
from nclab.theory.predict import Prediction, predict
from nclab.theory.problem import Problem, make_problem

__all__ = [
    "Problem",
    "make_problem",
    "Prediction",
    "predict",
    "ufm_objective",
    "ufm_objective_torch",
    "labels_from_counts",
]
