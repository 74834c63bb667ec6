"""Where a request goes: the one plan per request (`routing.plan`) and the money gate every paid
call passes (`routing.gate`)."""

from glm_saver.routing.gate import CloudGate, Refusal, Ticket

__all__ = ["CloudGate", "Refusal", "Ticket"]
