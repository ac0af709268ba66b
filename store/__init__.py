"""hybridnas.store: the SQL record of every campaign (SQLite by default, any SQLAlchemy URL).

    store = Store.open()                       # $HYBRIDNAS_STORE or sqlite:///hybridnas.db
    cid = store.create_campaign("demo", config, seed=0)
    cand, ev = store.add_candidate(cid, spec, generation=0, parents=[], task="mqar", fidelity=300, seed=0)
    store.finish_evaluation(ev, status="done", metrics={"accuracy": 0.9}, error=None, host=None,
                            device="cpu", wall_time_s=1.2, weights=None)
    store.leaderboard(cid)
"""

from __future__ import annotations

from hybridnas.store.artifacts import ArtifactError
from hybridnas.store.db import ARTIFACTS_ENV, DEFAULT_URL, URL_ENV, Store, resolve_url
from hybridnas.store.models import (
    CAMPAIGN_STATUSES,
    EVALUATION_STATUSES,
    SCHEMA_VERSION,
    ArtifactInfo,
    CampaignBusy,
    CampaignExists,
    CampaignInfo,
    CampaignNotFound,
    CandidateInfo,
    CandidateNotFound,
    DuplicateEvaluation,
    EvaluationAlreadyFinished,
    EvaluationInfo,
    EvaluationNotFound,
    LineageEdge,
    SchemaVersionError,
    StoreError,
    StoreNotFound,
    StoreOpenError,
    StoreReadOnly,
)
from hybridnas.store.queries import leaderboard, lineage, pareto

__all__ = [
    "Store",
    "resolve_url",
    "DEFAULT_URL",
    "URL_ENV",
    "ARTIFACTS_ENV",
    "SCHEMA_VERSION",
    "CAMPAIGN_STATUSES",
    "EVALUATION_STATUSES",
    "CampaignInfo",
    "CandidateInfo",
    "EvaluationInfo",
    "ArtifactInfo",
    "LineageEdge",
    "StoreError",
    "StoreNotFound",
    "StoreOpenError",
    "StoreReadOnly",
    "CampaignBusy",
    "SchemaVersionError",
    "CampaignExists",
    "CampaignNotFound",
    "CandidateNotFound",
    "EvaluationNotFound",
    "DuplicateEvaluation",
    "EvaluationAlreadyFinished",
    "ArtifactError",
    "leaderboard",
    "pareto",
    "lineage",
]
