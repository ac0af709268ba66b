"""The Optuna strategies: trials as outcomes, storage beside a real store, multi-objective, resume."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from hybridnas.search.strategies.optuna_samplers import CANDIDATE_ATTR, CONSTRAINT, DISCARD_ATTR, OptunaStrategy
from hybridnas.search.strategies import Observation, make_strategy
from hybridnas.space import ArchSpec, HybridChoices, LayerChoices, SpaceFile
from hybridnas.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")

PG_URL = os.environ.get("HYBRIDNAS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SPACE = SpaceFile(
    d_model=[32, 64],
    hybrid=HybridChoices(ratio=[1, 3, "all_linear"], linear_mixer=["gla", "deltanet", "gated_deltanet"], gate=["none", "swish"]),
).build(vocab_size=32)
LAYERS = SpaceFile(n_layers=[2, 3], layers=LayerChoices(mixer=["gla", "attention"], gate=["none", "swish"])).build(vocab_size=32)


def accuracy(spec: ArchSpec) -> float:
    return 0.5 * (spec.d_model == 64) + sum(l.mixer == "gated_deltanet" for l in spec.layers) / spec.n_layers


def params(spec: ArchSpec) -> float:
    return float(spec.d_model * spec.n_layers)


def step(strategy: OptunaStrategy, index: int, cid: int) -> ArchSpec:
    """reseed, propose, accepted: a candidate in flight."""
    strategy.reseed(index, 0)
    (p,) = strategy.propose(1)
    strategy.accepted(p, cid)
    return p.spec


def done(cid: int, spec: ArchSpec, n_objectives: int = 1) -> Observation:
    values = (accuracy(spec), params(spec))[:n_objectives]
    return Observation(cid, spec, values[0], values=values)


def drive(strategy: OptunaStrategy, n: int, start: int = 0, n_objectives: int = 1) -> list[Observation]:
    out = []
    for i in range(start, start + n):
        spec = step(strategy, i, i + 1)
        out.append(done(i + 1, spec, n_objectives))
        strategy.observe(out[-1])
    return out


def states(strategy: OptunaStrategy) -> list[str]:
    return [t.state.name for t in strategy.study.get_trials(deepcopy=False)]


# --- outcomes as trials ---------------------------------------------------------------------------


def test_outcomes_become_trial_states() -> None:
    s = make_strategy("tpe", SPACE, 0, n_startup=2)
    a, b, c = (step(s, i, i + 1) for i in range(3))
    s.observe(done(1, a))
    s.observe(Observation(2, b, None))  # failed
    s.observe(Observation(3, c, None, values=(0.9,), feasible=False))  # broke a measured bound
    s.reseed(3, 0)
    (dup,) = s.propose(1)
    s.discard(dup, "duplicate", done(1, a))
    s.reseed(3, 1)
    (refused,) = s.propose(1)
    s.discard(refused, "constraint: params 9000 > max_params 100")
    trials = s.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert [t.user_attrs.get(CANDIDATE_ATTR) for t in trials] == [1, 2, 3, None, None]
    assert trials[0].values == [accuracy(a)] and trials[0].constraints == {CONSTRAINT: 0.0}
    assert trials[2].values == [0.9] and trials[2].constraints == {CONSTRAINT: 1.0}
    assert trials[3].values == [accuracy(a)] and trials[3].user_attrs[DISCARD_ATTR] == "duplicate"
    assert trials[4].user_attrs[DISCARD_ATTR].startswith("constraint")
    assert SPACE.from_params({**SPACE.params_of(a), **trials[0].params}) == a
    assert "n_heads" not in trials[0].params  # genes with one choice are not parameters


def test_minimize_objective_and_score_only_observations() -> None:
    """With no values the oriented score is turned back into the raw objective."""
    s = make_strategy("tpe", SPACE, 0, directions=("minimize",))
    spec = step(s, 0, 1)
    s.observe(Observation(1, spec, -2.5))
    assert s.study.get_trials()[0].values == [2.5]
    with pytest.raises(ValueError, match=r"Observation.values: 2 values for 1 directions"):
        s.observe(Observation(2, step(s, 1, 2), 1.0, values=(1.0, 2.0)))


def test_bad_arguments_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"sampler: 'cmaes' is not allowed; allowed: tpe, nsga2, gp"):
        OptunaStrategy(SPACE, 0, sampler="cmaes")
    with pytest.raises(ValueError, match=r"directions: 'up' is not allowed"):
        OptunaStrategy(SPACE, 0, ("up",))
    with pytest.raises(ValueError, match=r"study_name: required"):
        OptunaStrategy(SPACE, 0, storage=f"sqlite:///{tmp_path / 'o.db'}")
    OptunaStrategy(SPACE, 0, storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="x").close()
    with pytest.raises(ValueError, match=r"directions: study 'x' has maximize, the campaign wants minimize"):
        OptunaStrategy(SPACE, 0, ("minimize",), storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="x")


def test_make_strategy_passes_the_search_settings() -> None:
    s = make_strategy("nsga2", SPACE, 0, population=5, crossover_prob=0.3, n_startup=None, tournament=9, unknown=1)
    assert (s.name, s.population, s.crossover_prob, s.n_startup) == ("nsga2", 5, 0.3, 10)
    s.reseed(0)
    assert s.study.sampler.population_size == 5
    g = make_strategy("gp", SPACE, 0, n_startup=3)
    assert (g.name, g.n_startup) == ("gp", 3)


def test_per_layer_parameters_follow_depth() -> None:
    s = make_strategy("tpe", LAYERS, 1, n_startup=3)
    drive(s, 8)
    for t in s.study.get_trials():
        n = t.params["n_layers"]
        assert {k for k in t.params if k.startswith("layer")} == {f"layer{i}.{g}" for i in range(n) for g in ("mixer", "gate")}


def test_retries_fall_back_to_random_samples() -> None:
    """A GP that keeps landing on a known design gets random proposals from the third attempt on."""
    s = make_strategy("gp", SPACE, 0, n_startup=2)
    drive(s, 3)
    s.reseed(3, 0)
    assert type(s.study.sampler).__name__ == "GPSampler"
    s.reseed(3, 2)
    assert type(s.study.sampler).__name__ == "RandomSampler"
    (p,) = s.propose(1)
    assert SPACE.contains(p.spec)


# --- multi-objective ------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_multi_objective_trials_carry_every_value(sampler: str) -> None:
    s = make_strategy(sampler, SPACE, 0, directions=("maximize", "minimize"), population=4, n_startup=4)
    observed = drive(s, 12, n_objectives=2)
    trials = s.study.get_trials()
    assert all(len(t.values) == 2 for t in trials)
    assert [tuple(t.values) for t in trials] == [o.values for o in observed]
    front = {tuple(t.values) for t in s.study.best_trials}
    assert front and all(not (a2 >= a1 and p2 <= p1 and (a2, p2) != (a1, p1)) for a1, p1 in front for a2, p2 in front)
    if sampler == "nsga2":  # later generations exist: the GA, not only its random first generation, proposed
        gens = {t.system_attrs.get("NSGAIISampler:generation") for t in trials}
        assert max(gens) >= 1


# --- storage beside the store, and resume ---------------------------------------------------------


def shares_a_database_with_the_store(url: str, tmp_path: Path, study_name: str) -> None:
    store = Store.open(url, artifacts_dir=tmp_path / "artifacts")
    try:
        campaign = store.create_campaign(f"c-{uuid.uuid4().hex[:8]}", {"search": {"strategy": "tpe"}}, seed=0)
        s = make_strategy("tpe", SPACE, 0, storage=store.url, study_name=study_name, n_startup=2)
        known: dict[int, Observation] = {}
        attempt = 0
        while len(known) < 4:
            s.reseed(len(known), attempt)
            (p,) = s.propose(1)
            old = store.find_candidate(campaign, p.spec.spec_hash)
            if old is not None:  # the controller's duplicate check
                s.discard(p, "duplicate", known[old])
                attempt += 1
                continue
            attempt = 0
            cid, eid = store.add_candidate(campaign, p.spec, generation=0, task="mqar", fidelity=10, seed=0)
            s.accepted(p, cid)
            store.finish_evaluation(eid, status="done", metrics={"accuracy": accuracy(p.spec)})
            known[cid] = Observation(cid, p.spec, accuracy(p.spec), values=(accuracy(p.spec),))
            s.observe(known[cid])
        s.close()
        tables = set(inspect(store.engine).get_table_names())
        assert {"studies", "trials", "trial_params", "alembic_version"} <= tables
        assert {"hnas_campaigns", "hnas_candidates", "hnas_evaluations"} <= tables
        reader = optuna.storages.RDBStorage(store.url)
        loaded = optuna.load_study(study_name=study_name, storage=reader)
        by_candidate = {t.user_attrs[CANDIDATE_ATTR]: t for t in loaded.get_trials() if CANDIDATE_ATTR in t.user_attrs}
        evaluations = {e.candidate_id: e for e in store.evaluations(campaign)}
        assert sorted(by_candidate) == sorted(evaluations)
        assert all(t.state == TrialState.COMPLETE for t in loaded.get_trials())
        for cid, t in by_candidate.items():
            assert t.values == [evaluations[cid].metrics["accuracy"]]
            spec = store.candidate(cid).spec
            spec = spec if isinstance(spec, ArchSpec) else ArchSpec.from_dict(spec)
            assert SPACE.from_params({**SPACE.params_of(spec), **t.params}).spec_hash == spec.spec_hash
        reader.engine.dispose()
    finally:
        store.close()
    with Store.open(url, artifacts_dir=tmp_path / "artifacts", create=False) as again:  # Optuna's tables do not upset it
        assert len(again.evaluations(campaign)) == 4


def test_study_lives_beside_the_store_on_sqlite(tmp_path: Path) -> None:
    shares_a_database_with_the_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path, "campaign-a")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped (with every table in it) afterwards."""
    try:
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:  # any failure to connect means: skip, and say why
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable ({type(e).__name__}); set HYBRIDNAS_TEST_POSTGRES")
    schema = f"hnas_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.mark.postgres
def test_study_lives_beside_the_store_on_postgres(pg_url: str, tmp_path: Path) -> None:
    shares_a_database_with_the_store(pg_url, tmp_path, f"campaign-{uuid.uuid4().hex[:8]}")


def test_resume_tells_nothing_twice_and_repairs_what_a_kill_left(tmp_path: Path) -> None:
    url, name = f"sqlite:///{tmp_path / 'o.db'}", "c"
    s = make_strategy("tpe", SPACE, 0, storage=url, study_name=name, n_startup=2)
    observed = drive(s, 3)
    in_flight = step(s, 3, 4)  # candidate 4 runs when the controller dies...
    s.reseed(4, 0)
    s.propose(1)  # ...with a proposal asked but never accepted
    s.close()

    r = make_strategy("tpe", SPACE, 0, storage=url, study_name=name, n_startup=2)
    assert states(r) == ["COMPLETE"] * 3 + ["RUNNING", "FAIL"]  # the orphan is failed, candidate 4 waits
    for o in observed:  # the controller replays every recorded outcome
        r.observe(o)
    assert len(r.study.get_trials()) == 5
    r.observe(done(4, in_flight))  # the re-run of candidate 4 finishes: its own trial is told
    late = step(r, 4, 5)
    r.observe(done(5, late))
    # A candidate recorded by the store but never tied to a trial (killed between add and accepted).
    r.observe(done(6, SPACE.designs()[0]))
    trials = r.study.get_trials()
    # No outcome told twice, none lost: one trial per candidate, plus the failed orphan.
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4 + ["FAIL"] + ["COMPLETE"] * 2
    assert [t.user_attrs.get(CANDIDATE_ATTR) for t in trials] == [1, 2, 3, 4, None, 5, 6]
    assert trials[3].values == [accuracy(in_flight)] and trials[6].values == [accuracy(SPACE.designs()[0])]
    r.close()
    again = make_strategy("tpe", SPACE, 0, storage=url, study_name=name)
    for o in [*observed, done(4, in_flight), done(5, late), done(6, SPACE.designs()[0])]:
        again.observe(o)
    assert len(again.study.get_trials()) == 7
    again.close()


def test_in_memory_replay_rebuilds_the_study() -> None:
    """Without a storage, a fresh strategy that replays the outcomes proposes what the original would
    (results recorded in proposal order, no duplicate discarded: the replay has no such trials)."""
    for sampler in ("tpe", "nsga2", "gp"):
        a = make_strategy(sampler, SPACE, 2, n_startup=3, population=3)
        observed = drive(a, 7)
        b = make_strategy(sampler, SPACE, 2, n_startup=3, population=3)
        for o in observed:
            b.observe(o)
        nxt_a = [o.spec.spec_hash for o in drive(a, 3, start=7)]
        nxt_b = [o.spec.spec_hash for o in drive(b, 3, start=7)]
        assert nxt_a == nxt_b, sampler
