"""Score-based particle solvers for Fokker–Planck and Landau equations, with exact solutions.

``solve(problem, particles, times, fit=GaussianKDE)`` moves particles with a velocity that
contains the score of their own density (refitted by ``fit``, or ``score="exact"``, or a given
``score_fn=``); the problems carry exact solutions (OU / heat from Gaussian
mixtures, BKW, the Maxwell covariance law) to validate against.
"""

from pyro_disco.pde import diagnostics
from pyro_disco.pde.exact import BKW, GaussianMixtureSolution, MaxwellRelaxation, mixture_moments
from pyro_disco.pde.problems import FokkerPlanck, Landau, landau_velocity
from pyro_disco.pde.solve import STEPPERS, Trajectory, solve

__all__ = [
    "solve",
    "Trajectory",
    "STEPPERS",
    "FokkerPlanck",
    "GaussianMixtureSolution",
    "Landau",
    "BKW",
    "MaxwellRelaxation",
    "landau_velocity",
    "mixture_moments",
    "diagnostics",
]
