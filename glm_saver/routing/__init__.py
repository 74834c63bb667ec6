"""Where a request goes: the ladder of tiers (tiers.py), the strategy policy (policy.py), request validation (validation.py), the
one plan per request (plan.py) and the money gate every paid call passes (gate.py)."""

from glm_saver.routing.gate import CloudGate, Refusal, Ticket
from glm_saver.routing.plan import Plan, Planner
from glm_saver.routing.policy import Decision, RequestTooLarge, decide
from glm_saver.routing.tiers import Route, Tier, Tiers
from glm_saver.routing.validation import request_problem

__all__ = ["CloudGate", "Decision", "Plan", "Planner", "Refusal", "RequestTooLarge", "Route", "Ticket", "Tier", "Tiers", "decide", "request_problem"]
