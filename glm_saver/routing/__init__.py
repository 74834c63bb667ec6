"""Where a request goes: the strategy policy (policy.py), request validation (validation.py), the
one plan per request (plan.py) and the money gate every paid call passes (gate.py)."""

from glm_saver.routing.gate import CloudGate, Refusal, Ticket
from glm_saver.routing.plan import Plan, Planner
from glm_saver.routing.policy import ROUTES, Decision, RequestTooLarge, Route, Windows, decide
from glm_saver.routing.validation import request_problem

__all__ = ["ROUTES", "CloudGate", "Decision", "Plan", "Planner", "Refusal", "RequestTooLarge", "Route", "Ticket", "Windows", "decide", "request_problem"]
