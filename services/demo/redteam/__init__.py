"""Red-team replay suite: model-extraction attacks and benign clients that query a victim through a callable.

Pure modules: an oracle is any ``query(X) -> labels | probabilities`` callable, so the same attack runs
against an in-process model in a unit test and through the gateway in a benchmark. See ``base`` for the
step-by-step protocol and ``fidelity`` for how copies are scored.
"""

from services.demo.redteam.adaptive import AdaptiveRetraining
from services.demo.redteam.base import Attack, BudgetExceeded, Copy, Domain, Oracle, OracleError, Progress
from services.demo.redteam.benign import BenignBatch, BenignClient, BenignProfile, benign_population
from services.demo.redteam.equation_solving import EquationSolving
from services.demo.redteam.fidelity import Fidelity, measure
from services.demo.redteam.jbda import JacobianAugmentation
from services.demo.redteam.knockoff import Knockoff, image_shifts
from services.demo.redteam.lowd_meek import LowdMeek
from services.demo.redteam.path_finding import TreePathFinding

__all__ = [
    "AdaptiveRetraining",
    "Attack",
    "BenignBatch",
    "BenignClient",
    "BenignProfile",
    "BudgetExceeded",
    "Copy",
    "Domain",
    "EquationSolving",
    "Fidelity",
    "JacobianAugmentation",
    "Knockoff",
    "LowdMeek",
    "Oracle",
    "OracleError",
    "Progress",
    "TreePathFinding",
    "benign_population",
    "image_shifts",
    "measure",
]
