from __future__ import annotations

import pytest

from services.api.ratelimit import TokenBucket


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    assert [bucket.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a", now=0.0) == pytest.approx(0.5)  # one token at 2/s
    assert bucket.take("b", now=0.0) == 0.0  # another source has its own bucket
    assert bucket.take("a", now=0.5) == 0.0
    assert bucket.take("a", now=0.5) > 0
    assert TokenBucket.retry_after(0.2) == "1" and TokenBucket.retry_after(2.1) == "3"


def test_memory_stays_bounded_by_forgetting_the_least_recent_source() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1, max_keys=2)
    bucket.take("a", now=0.0)
    bucket.take("b", now=0.0)
    bucket.take("c", now=0.0)
    assert len(bucket._buckets) == 2 and "a" not in bucket._buckets
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0.0, burst=1)
