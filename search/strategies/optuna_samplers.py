"""Optuna's samplers (TPE, NSGA-II, GP) as strategies, through ask-and-tell.

One Optuna trial per proposal. `propose` asks and builds the design with `SearchSpace.suggest`: every
gene with more than one choice is a categorical parameter, and per-layer genes exist only for the
depths that reach them. `accepted` ties the trial to its candidate (user attr `hnas_candidate`);
`observe` and `discard` tell. How outcomes become trials:

  done                     COMPLETE with the objective values, constraint `hnas_infeasible` = 0
  infeasible (a measured   COMPLETE with its values and `hnas_infeasible` = 1: the samplers' constrained
  metric broke a bound)    modes (c-TPE, constrained domination in NSGA-II, constrained GP) then learn
                           both where the objectives are good and where designs break bounds. Every
                           COMPLETE trial carries the constraint, since GPSampler needs the same ones
                           on all trials.
  failed                   FAIL (samplers ignore it)
  discard "duplicate"      the existing candidate's outcome as above, or FAIL while it is unfinished
  discard "constraint..."  FAIL: an analytic bound refused it before training, so there are no values

Storage: by default (`storage="store"`) the study lives in the campaign's own database, which the
controller names in `attach`, so Optuna's tables sit beside the `hnas_*` ones and
`optuna-dashboard <store URL>` shows the study; an explicit SQLAlchemy URL puts it there instead,
and None (or a strategy used without a controller) keeps it in memory. The controller is the only process that touches the study, and Optuna's heartbeat (which
needs `study.optimize`) is not used: instead, on start, a RUNNING trial that never became a candidate
(the controller died between ask and accepted) is told FAIL.

Determinism: `reseed(index, attempt)` installs a fresh sampler seeded from (seed, index, attempt), so
a proposal depends only on that seed and on the trials in the study. From the third attempt at the
same candidate on (`MODEL_ATTEMPTS`), tpe and gp propose random samples instead; nsga2 varies with
the seed by itself.

Resume with a storage: the study is already there. Recorded outcomes are not told twice (the
candidate attr says which trial they belong to), trials of candidates still in flight are told when
their re-run finishes, and an outcome whose trial is missing is added with `study.add_trial`. The
next proposals are those of the uninterrupted run (a trial failed as orphaned is ignored by every
sampler). Resume in memory: the replayed observations rebuild the study, which matches the
uninterrupted run when results were recorded in proposal order and no duplicate was discarded
(a duplicate's trial is not an observation, so a replay cannot restore it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import warnings
from typing import Any, Mapping

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseSampler, GPSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.trial import Trial, TrialState, create_trial
from sqlalchemy import event
from sqlalchemy.engine import make_url

from hybridnas.search.strategies.base import Observation, Proposal, Strategy, setting
from hybridnas.space import SearchSpace

__all__ = ["CANDIDATE_ATTR", "CONSTRAINT", "DISCARD_ATTR", "MODEL_ATTEMPTS", "SAMPLERS", "OptunaStrategy", "derive_seed"]

#: Sampler names and what they are.
SAMPLERS: dict[str, str] = {
    "tpe": "Tree-structured Parzen Estimator (multivariate; grouped for per-layer spaces)",
    "nsga2": "NSGA-II genetic algorithm (generations of `population` trials)",
    "gp": "Gaussian-process Bayesian optimization (needs scipy)",
}
#: Trial user attr holding the candidate id the trial became.
CANDIDATE_ATTR = "hnas_candidate"
#: Trial user attr holding why the controller refused the proposal.
DISCARD_ATTR = "hnas_discarded"
#: Constraint set on every COMPLETE trial: 1.0 when a measured metric broke a bound, else 0.0.
CONSTRAINT = "hnas_infeasible"
#: Refused proposals for one candidate after which tpe and gp propose random samples: the GP's
#: acquisition maximum does not move when a known design is told again (nor when a failure is), so
#: retrying the model would propose the same design until the controller gives up.
MODEL_ATTEMPTS = 2
SQLITE_TIMEOUT_S = 30.0  # how long Optuna's SQLite connection waits for the store's write lock


def derive_seed(seed: int, *parts: object) -> int:
    """A 32-bit seed that depends only on `seed` and `parts` (numpy seeds must fit in 32 bits)."""
    text = ":".join(map(str, (seed, *parts)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage at `url`. On SQLite: WAL (readers never block the writer, as for the store)
    and synchronous=NORMAL, since Optuna commits once per parameter and the store, not the study, is
    the record a resume trusts (see `OptunaStrategy._resume`)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    kw: dict[str, Any] = {}
    if "timeout" not in u.query:
        kw["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    storage = optuna.storages.RDBStorage(url, engine_kwargs=kw)
    storage.engine.dispose()  # connections made so far lack the pragmas below

    @event.listens_for(storage.engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            if u.database not in (None, "", ":memory:") and cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()

    return storage


class OptunaStrategy(Strategy):
    """An Optuna sampler driven by the controller's contract (see the module docstring)."""

    def __init__(
        self,
        space: SearchSpace,
        seed: int,
        directions: tuple[str, ...] = ("maximize",),
        *,
        sampler: str = "tpe",
        storage: str | None = "store",
        study_name: str | None = None,
        load_if_exists: bool = True,
        n_startup: int = 10,
        population: int = 8,
        crossover_prob: float = 0.9,
    ) -> None:
        super().__init__(space, seed, directions)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler: {sampler!r} is not allowed; allowed: {', '.join(SAMPLERS)}")
        for d in self.directions:
            if d not in ("maximize", "minimize"):
                raise ValueError(f"directions: {d!r} is not allowed; allowed: maximize, minimize")
        if not self.directions:
            raise ValueError("directions: needs at least one objective")
        if sampler == "gp" and importlib.util.find_spec("scipy") is None:
            raise ImportError("search.strategy 'gp' needs scipy (pip install scipy)")
        if storage not in (None, "store") and not study_name:
            raise ValueError("study_name: required with a storage, so that a resumed campaign finds its study")
        if n_startup < 0:
            raise ValueError(f"n_startup: {n_startup} must be >= 0")
        if population < 2:
            raise ValueError(f"population: {population} must be >= 2")
        self.name = sampler
        self.n_startup = n_startup  # random trials before TPE / GP model the results
        self.population = population  # NSGA-II generation size
        self.crossover_prob = crossover_prob  # NSGA-II: chance a child mixes two parents
        self.load_if_exists = load_if_exists
        self.storage_setting = storage  # "store": the campaign's database (see attach); None: memory; or a URL
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._storage: optuna.storages.RDBStorage | None = None
        self._study: optuna.Study | None = None
        self._running: dict[int, Trial] = {}  # candidate id -> its unfinished trial
        self._finished: set[int] = set()  # candidate ids whose trial is told
        if storage not in (None, "store"):
            self._open(storage, study_name)

    @classmethod
    def from_settings(
        cls, space: SearchSpace, seed: int, directions: tuple[str, ...], settings: Mapping[str, Any], sampler: str = "tpe"
    ) -> OptunaStrategy:
        return cls(
            space,
            seed,
            directions,
            sampler=sampler,
            n_startup=setting(settings, "n_startup", 10),
            population=setting(settings, "population", 8),
            crossover_prob=setting(settings, "crossover_prob", 0.9),
        )

    def attach(self, store_url: str | None, study_name: str) -> None:
        """Keep the study in the campaign's database (unless told otherwise), under `study_name`."""
        if self._study is None:
            self._open(store_url if self.storage_setting == "store" else self.storage_setting, study_name)

    def _open(self, url: str | None, study_name: str | None) -> None:
        """Create (or, on resume, load) the study: in the database at `url`, or in memory."""
        try:
            self._storage = _rdb_storage(url) if url is not None else None
            self._study = optuna.create_study(
                storage=self._storage,
                study_name=study_name,
                directions=list(self.directions),
                sampler=self._sampler(derive_seed(self.seed, "start")),
                load_if_exists=self.load_if_exists,
            )
            found = tuple(d.name.lower() for d in self._study.directions)
            if found != self.directions:
                raise ValueError(f"directions: study {study_name!r} has {', '.join(found)}, the campaign wants {', '.join(self.directions)}")
            self._resume()
        except BaseException:
            self.close()
            raise

    @property
    def study(self) -> optuna.Study:
        """The study; in memory when nothing attached the strategy to a store."""
        if self._study is None:
            self._open(None, None)
        assert self._study is not None
        return self._study

    # -- samplers ------------------------------------------------------------------------------
    def _sampler(self, seed: int) -> BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # TPE's `group`
            if self.name == "tpe":
                return TPESampler(
                    seed=seed,
                    n_startup_trials=self.n_startup,
                    multivariate=True,
                    group=self.space.mode == "layers",  # per-layer genes exist only at some depths
                )
            if self.name == "nsga2":
                return NSGAIISampler(seed=seed, population_size=self.population, crossover_prob=self.crossover_prob)
            return GPSampler(
                seed=seed,
                n_startup_trials=self.n_startup,
                independent_sampler=RandomSampler(seed=seed),
                warn_independent_sampling=False,
            )

    def reseed(self, index: int, attempt: int = 0) -> None:
        super().reseed(index, attempt)
        # A fresh sampler: no cache or RNG state carries over from earlier proposals.
        seed = derive_seed(self.seed, index, attempt)
        if attempt >= MODEL_ATTEMPTS and self.name in ("tpe", "gp"):
            self.study.sampler = RandomSampler(seed=seed)
        else:
            self.study.sampler = self._sampler(seed)

    # -- the contract --------------------------------------------------------------------------
    def propose(self, n: int) -> list[Proposal]:
        out = []
        for _ in range(n):
            trial = self.study.ask()

            def pick(name: str, choices: tuple[Any, ...], trial: Trial = trial) -> Any:
                # A gene with one choice is no question: it stays out of the study (and the storage).
                return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)

            try:
                spec = self.space.suggest(pick)
            except Exception:
                self.study.tell(trial, state=TrialState.FAIL)  # never leave a trial RUNNING
                raise
            out.append(Proposal(spec, token=trial))
        return out

    def accepted(self, proposal: Proposal, candidate_id: int) -> None:
        trial = self._trial_of(proposal)
        trial.set_user_attr(CANDIDATE_ATTR, candidate_id)
        self._running[candidate_id] = trial

    def discard(self, proposal: Proposal, reason: str, known: Observation | None = None) -> None:
        trial = self._trial_of(proposal)
        trial.set_user_attr(DISCARD_ATTR, reason)
        self._tell(trial, known if reason == "duplicate" else None)

    def observe(self, observation: Observation) -> None:
        cid = observation.candidate_id
        if cid in self._finished:
            return  # told before the controller restarted
        trial = self._running.pop(cid, None)
        if trial is not None:
            self._tell(trial, observation)
        else:
            self._add(observation)
        self._finished.add(cid)

    def close(self) -> None:
        if self._storage is not None:
            self._storage.remove_session()
            self._storage.engine.dispose()

    # -- helpers -------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Map candidates to the trials already in the study; fail trials no candidate came from."""
        for t in self.study.get_trials(deepcopy=False):
            cid = t.user_attrs.get(CANDIDATE_ATTR)
            if cid is not None:
                if t.state.is_finished():
                    self._finished.add(cid)
                else:
                    self._running[cid] = Trial(self.study, t._trial_id)  # FrozenTrial has no public id
            elif t.state == TrialState.RUNNING:
                self.study.tell(t.number, state=TrialState.FAIL)

    def _trial_of(self, proposal: Proposal) -> Trial:
        if not isinstance(proposal.token, Trial):
            raise ValueError(f"proposal.token: expected the Optuna trial this strategy asked, got {proposal.token!r}")
        return proposal.token

    def _outcome(self, o: Observation | None) -> tuple[list[float] | None, float]:
        """(values, constraint) to tell COMPLETE, or (None, 0) to tell FAIL."""
        if o is None:
            return None, 0.0
        values = [float(v) for v in o.values]
        if not values and o.score is not None and len(self.directions) == 1:
            values = [o.score if self.directions[0] == "maximize" else -o.score]  # score is oriented
        if (o.score is None and o.feasible) or not values:
            return None, 0.0  # failed
        if len(values) != len(self.directions):
            raise ValueError(f"Observation.values: {len(values)} values for {len(self.directions)} directions")
        if not all(math.isfinite(v) for v in values):
            return None, 0.0
        return values, 0.0 if o.feasible else 1.0

    def _tell(self, trial: Trial, o: Observation | None) -> None:
        values, constraint = self._outcome(o)
        if values is None:
            self.study.tell(trial, state=TrialState.FAIL)
            return
        trial.set_constraint(CONSTRAINT, constraint)
        self.study.tell(trial, values)

    def _add(self, o: Observation) -> None:
        """A finished candidate with no trial (replayed in memory, or asked before a crash): add one."""
        values, constraint = self._outcome(o)
        distributions = {
            name: CategoricalDistribution(choices)
            for name, choices in self.space.param_choices(o.spec.n_layers)
            if len(choices) > 1
        }
        params = self.space.params_of(o.spec)
        self.study.add_trial(
            create_trial(
                state=TrialState.COMPLETE if values is not None else TrialState.FAIL,
                values=values,
                params={name: params[name] for name in distributions},
                distributions=distributions,
                user_attrs={CANDIDATE_ATTR: o.candidate_id},
                system_attrs=self._generation() if values is not None else {},
                constraints={CONSTRAINT: constraint} if values is not None else None,
            )
        )

    def _generation(self) -> dict[str, Any]:
        """NSGA-II's generation attr for a trial added now, as the sampler would have set it when asked.

        The first trial of a generation is where the sampler picks (and caches) that generation's
        parents, so they are picked here too, from the same trials as in the original run.
        """
        if self.name != "nsga2":
            return {}
        key = NSGAIISampler._get_generation_key()
        gens = [t.system_attrs.get(key, -1) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        top = max([0, *gens])
        generation = top if gens.count(top) < self.population else top + 1
        sampler = self.study.sampler
        if generation > 0 and generation not in gens and isinstance(sampler, NSGAIISampler):
            sampler.get_parent_population(self.study, generation)
        return {key: generation}
