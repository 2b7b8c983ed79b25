"""Webhook dead letters: deliveries the detector gave up on, to inspect and requeue once the receiver works."""

from __future__ import annotations

from fastapi import APIRouter, Query

from services.api.deps import OperatorDep, ReaderDep, RedisDep
from services.api.problems import errors
from services.api.schemas import DeadLetter, DeadLetterPage, Requeued
from services.core.webhooks import DEAD_LETTERS, list_dead_letters, requeue_dead_letters

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.get("/dead-letters", response_model=DeadLetterPage, responses=errors())
def read_dead_letters(
    r: RedisDep, _: ReaderDep, offset: int = Query(0, ge=0), limit: int = Query(50, ge=1, le=500)
) -> DeadLetterPage:
    """Dead letters, oldest first: the alert payload, the event and how many attempts failed."""
    total, items = list_dead_letters(r, offset, limit)
    return DeadLetterPage(total=total, offset=offset, items=[DeadLetter(**i) for i in items])


@router.post("/dead-letters/requeue", response_model=Requeued, responses=errors())
def requeue(r: RedisDep, _: OperatorDep, limit: int = Query(1000, ge=1, le=100_000)) -> Requeued:
    """Move up to ``limit`` dead letters, oldest first, back to the outbox with their attempts reset."""
    moved = requeue_dead_letters(r, limit)
    return Requeued(requeued=moved, remaining=int(r.llen(DEAD_LETTERS)))  # type: ignore[arg-type]
