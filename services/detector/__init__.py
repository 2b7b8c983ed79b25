"""Model-extraction detection: pure streaming signals over one client's queries, and the engine combining them.

No Redis, HTTP or framework code here (the service adapter lives in ``services.detector.service``).
Importing this package has no side effects.
"""

from services.detector.base import Signal, SignalResult
from services.detector.boundary import BoundarySignal
from services.detector.engine import Assessment, ClientState, DetectionEngine
from services.detector.ood import OODSignal
from services.detector.prada import PradaSignal
from services.detector.risk import RiskThresholds, calibrate, combine
from services.detector.sweep import SweepSignal

__all__ = [
    "Assessment",
    "BoundarySignal",
    "ClientState",
    "DetectionEngine",
    "OODSignal",
    "PradaSignal",
    "RiskThresholds",
    "Signal",
    "SignalResult",
    "SweepSignal",
    "calibrate",
    "combine",
]
