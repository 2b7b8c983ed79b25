"""The population baseline: other clients' traffic explains a shared capture shift; one key, or probes that
are far from one another, explain nothing; the ring stays bounded."""

from __future__ import annotations

import numpy as np
import pytest

from services.core.settings import Settings, settings_section
from services.detector.augment import ImageVariation
from services.detector.ood import OODSignal
from services.detector.population import Population, PopulationConfig
from tests.unit.detector import streams
from tests.unit.detector.conftest import Digits, Victim

SMALL = PopulationConfig(capacity=64, per_client=2, support=3, min_clients=3)


def test_support_distance_counts_distinct_other_clients() -> None:
    pop = Population(4, SMALL)
    for c in range(5):  # client c sends rows at distance 2c from the origin
        pop.add(f"c{c}", np.full((3, 4), float(c)))
    assert pop.clients == 5 and pop.active
    assert int((pop.owners >= 0).sum()) == 10  # 2 rows per client kept, the third refused
    q = np.zeros((2, 4))
    np.testing.assert_allclose(pop.support_distance(q, "stranger"), [4.0, 4.0])  # clients 0, 1, 2
    np.testing.assert_allclose(pop.support_distance(q, "c0"), [6.0, 6.0])  # its own rows never count


def test_warm_up_and_eviction_keep_it_bounded() -> None:
    pop = Population(4, PopulationConfig(capacity=8, per_client=2, support=2, min_clients=3))
    pop.add("a", np.zeros((2, 4)))
    pop.add("b", np.zeros((2, 4)))
    assert not pop.active and np.isinf(pop.support_distance(np.zeros((1, 4)), "x")).all()
    for c in range(50):
        pop.add(f"k{c}", np.ones((5, 4)))
    assert pop.clients == 4 and len(pop._codes) == 4  # 8 rows, 2 each: the last four clients only
    assert pop.add("k49", np.ones((1, 4))) == 0  # at its cap


def test_the_defaults_are_the_settings() -> None:
    assert PopulationConfig() == settings_section(Settings.model_construct(), "detector_population_", PopulationConfig)
    with pytest.raises(ValueError):
        PopulationConfig(support=10, min_clients=5)


@pytest.fixture(scope="module")
def signal(digits: Digits, victim: Victim) -> OODSignal:
    X = digits.X_ref
    return OODSignal.fit(X[:300], X[300:], victim.labels(X[300:]), n_features=64, n_classes=10)


def test_a_device_many_clients_share_is_explained_noise_is_not(signal: OODSignal, digits: Digits) -> None:
    rng = np.random.default_rng(0)
    # One popular device: a sticker over the same part of every digit (far from the clean reference)
    device = ImageVariation((8, 8), 0.0, 16.0, families=("occlusion",)).for_client(np.random.default_rng(5))
    occluded = device(digits.X_fresh, rng)
    pool, query = occluded[:-200], occluded[-200:]
    pop = Population(64, PopulationConfig(capacity=4096, per_client=8, support=5, min_clients=20))
    for c in range(60):  # 60 customers with that device
        pop.add(f"c{c}", signal.features(pool[rng.choice(len(pool), 8, replace=False)]))
    for c in range(60):  # and 60 keys of one attacker, each sending uniform noise
        pop.add(f"noise{c}", signal.features(streams.uniform(rng, 8)))
    alone = np.mean(signal.scores(query) > 1)
    explained = np.mean(signal.scores(query, pop, "newcomer") > 1)
    assert alone > 0.3 and explained < 0.3 * alone
    noise = streams.uniform(rng, 200)  # probes far from one another: the 60 noisy keys explain none of them
    assert np.mean(signal.scores(noise, pop, "noise0") > 1) > 0.95


def test_a_saved_ring_comes_back_exactly_and_a_foreign_one_is_refused() -> None:
    pop = Population(4, PopulationConfig(capacity=8, per_client=2, support=2, min_clients=3))
    for c in range(6):  # 12 rows offered into 8 slots: eviction has moved the cursor and dropped clients
        pop.add(f"k{c}", np.full((3, 4), float(c)))
    blob = pop.to_bytes("ood:d=4,features=raw")
    back = Population.from_bytes(blob, 4, pop.config, "ood:d=4,features=raw")
    np.testing.assert_array_equal(back.rows, pop.rows)
    np.testing.assert_array_equal(back.owners, pop.owners)
    assert back._codes == pop._codes and back._counts == pop._counts and back._pos == pop._pos
    q = np.zeros((2, 4))
    np.testing.assert_allclose(back.support_distance(q, "k3"), pop.support_distance(q, "k3"))
    back.add("new", np.ones((1, 4)))  # keeps working: the next client gets a fresh code and the next slot
    assert back._codes["new"] == max(pop._codes.values()) + 1
    with pytest.raises(ValueError, match="layout"):
        Population.from_bytes(blob, 4, pop.config, "ood:d=4,features=standardised")
    with pytest.raises(ValueError, match="capacity"):
        Population.from_bytes(
            blob, 4, PopulationConfig(capacity=16, per_client=2, support=2, min_clients=3), "ood:d=4,features=raw"
        )
    with pytest.raises(ValueError, match="per-client"):
        Population.from_bytes(
            blob, 4, PopulationConfig(capacity=8, per_client=1, support=1, min_clients=3), "ood:d=4,features=raw"
        )
    with pytest.raises(ValueError, match="unreadable"):
        Population.from_bytes(blob[:100], 4, pop.config, "ood:d=4,features=raw")
