"""Benign clients: natural inputs only, and the behaviours real users show (skew, topics, retries, rates)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from services.demo.redteam import BenignBatch, BenignClient, BenignProfile, benign_population
from tests.unit.demo.redteam.conftest import Split


def _client(digits: Split, seed: int = 0, **profile: object) -> BenignClient:
    return BenignClient(
        pool=digits.X_test,
        labels=digits.y_test,
        domain=digits.domain,
        profile=BenignProfile(**profile),  # type: ignore[arg-type]
        client_id="c",
        seed=seed,
    )


def _rows(batches: list[BenignBatch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.vstack([b.X for b in batches]),
        np.concatenate([b.labels for b in batches]),
        np.concatenate([b.kinds for b in batches]),
    )


def test_streams_are_seeded_and_sum_to_the_requested_queries(digits: Split) -> None:
    a = list(_client(digits, seed=1).batches(301))
    b = list(_client(digits, seed=1).batches(301))
    c = list(_client(digits, seed=2).batches(301))
    assert sum(len(x.X) for x in a) == 301
    np.testing.assert_array_equal(_rows(a)[0], _rows(b)[0])
    assert [x.delay_s for x in a] == [x.delay_s for x in b]
    assert not np.array_equal(_rows(a)[0][:50], _rows(c)[0][:50])


def test_fresh_rows_are_pool_rows_and_shuffled_order_follows_the_pool_prior(digits: Split) -> None:
    X, y, kinds = _rows(list(_client(digits, near_duplicate_rate=0.0, retry_rate=0.0).batches(2000)))
    assert set(kinds) == {"fresh"}
    pool = {row.tobytes(): label for row, label in zip(digits.X_test, digits.y_test, strict=True)}
    assert all(pool[row.tobytes()] == label for row, label in zip(X, y, strict=True))
    counts = np.bincount(y, minlength=10)
    expected = np.bincount(digits.y_test, minlength=10) / len(digits.y_test) * len(y)
    assert chisquare(counts, expected).pvalue > 0.001  # chi-square goodness of fit, 9 df, n = 2,000


def test_skewed_clients_favour_a_few_classes(digits: Split) -> None:
    _, y, _ = _rows(list(_client(digits, order="skewed", zipf_exponent=1.5).batches(2000)))
    share = np.sort(np.bincount(y, minlength=10))[::-1] / len(y)
    # Zipf(1.5) over 10 classes puts 0.50 on the first and 0.68 on the first two.
    assert share[0] >= 0.4 and share[:2].sum() >= 0.6


def test_topical_clients_send_a_few_classes_at_a_time(digits: Split) -> None:
    _, y, kinds = _rows(list(_client(digits, order="topical", topic_size=2, topic_length=40).batches(1200)))
    fresh = y[kinds == "fresh"]
    windows = [fresh[i : i + 40] for i in range(0, len(fresh) - 39, 40)]
    assert all(len(set(w)) <= 2 for w in windows)
    assert len(set(fresh)) >= 8  # yet over the whole stream the topics move around


def test_retries_resend_the_previous_batch_and_near_duplicates_are_close(digits: Split) -> None:
    client = _client(digits, retry_rate=0.2, near_duplicate_rate=0.1, noise_scale=0.01, batch_min=2, batch_max=6)
    batches = list(client.batches(3000))
    retries = [i for i, b in enumerate(batches) if b.kinds[0] == "retry"]
    assert 0.12 <= len(retries) / len(batches) <= 0.25  # 0.2 per batch, never two in a row
    for i in retries:
        assert set(batches[i].kinds) == {"retry"} and batches[i].delay_s <= 5.0
        np.testing.assert_array_equal(batches[i].X, batches[i - 1].X[: len(batches[i].X)])
    X, _, kinds = _rows([b for b in batches if b.kinds[0] != "retry"])
    near = X[kinds == "near_duplicate"]
    assert 0.06 <= len(near) / len(X) <= 0.14
    fresh = X[kinds == "fresh"]
    # σ = 0.16 grey levels: each near-duplicate is within 1 grey level (L∞) of a fresh row, never equal to one.
    dist = np.abs(near[:, None, :] - fresh[None, :, :]).max(axis=2).min(axis=1)
    assert np.all(dist > 0) and np.all(dist < 1.0)


def test_batch_sizes_and_delays_follow_the_profile(digits: Split) -> None:
    client = _client(digits, batch_min=4, batch_max=12, mean_interval_s=3.0, session_break_rate=0.05, retry_rate=0.0)
    batches = list(client.batches(8000))
    sizes = np.array([len(b.X) for b in batches[:-1]])  # the last batch is cut to the total
    assert sizes.min() >= 4 and sizes.max() <= 12 and len(set(sizes)) == 9
    delays = np.array([b.delay_s for b in batches])
    short = delays[delays < 60]
    assert np.all(delays >= 0) and 2.5 <= short.mean() <= 3.5
    assert 0.02 <= np.mean(delays > 60) <= 0.08  # session breaks (mean 600 s) at a 5 % rate


def test_population_is_varied_and_reproducible(digits: Split) -> None:
    pop = benign_population(pool=digits.X_test, labels=digits.y_test, domain=digits.domain, n_clients=9, seed=4)
    again = benign_population(pool=digits.X_test, labels=digits.y_test, domain=digits.domain, n_clients=9, seed=4)
    assert [c.profile for c in pop] == [c.profile for c in again]
    assert len({c.client_id for c in pop}) == 9 and len({c.seed for c in pop}) == 9
    assert {c.profile.order for c in pop} == {"shuffled", "skewed", "topical"}
    assert len({(c.profile.batch_min, c.profile.batch_max) for c in pop}) >= 3
    assert len({round(c.profile.mean_interval_s, 3) for c in pop}) == 9


@pytest.mark.parametrize(
    "profile, reason",
    [
        ({"order": "random"}, "order"),
        ({"retry_rate": 1.0}, "retry_rate"),
        ({"batch_min": 5, "batch_max": 2}, "batch_max"),
        ({"mean_interval_s": 0.0}, "mean_interval_s"),
    ],
)
def test_profiles_reject_bad_values(profile: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        BenignProfile(**profile)  # type: ignore[arg-type]


def test_client_rejects_mismatched_labels(digits: Split) -> None:
    with pytest.raises(ValueError, match="labels"):
        BenignClient(pool=digits.X_test, labels=digits.y_test[:-1], domain=digits.domain)
