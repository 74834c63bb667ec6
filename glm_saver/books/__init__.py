"""The books: what every answer cost and saved (ledger), budgets with their holds and alerts,
Cerebras' rate-limit headroom, where that state lives (store: memory, SQLite or Redis), the
routing counters of /stats and the Prometheus series."""

from glm_saver.books.budgets import BudgetBook, BudgetRefusal, BudgetUse
from glm_saver.books.counters import RoutingStats
from glm_saver.books.headroom import CloudHeadroom, Quota, Reservation
from glm_saver.books.ledger import Books, Charge, Ledger
from glm_saver.books.store import STORE_HEALTH, Store, StoreUnavailable, build_store

__all__ = [
    "STORE_HEALTH",
    "Books",
    "BudgetBook",
    "BudgetRefusal",
    "BudgetUse",
    "Charge",
    "CloudHeadroom",
    "Ledger",
    "Quota",
    "Reservation",
    "RoutingStats",
    "Store",
    "StoreUnavailable",
    "build_store",
]
