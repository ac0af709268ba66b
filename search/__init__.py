"""The search stage: campaign files, the controller, its scheduler and lease, the strategies, the Python API."""

from __future__ import annotations

from hybridnas.search.api import CampaignRun, open_campaign, run_campaign
from hybridnas.search.campaign import Campaign, CampaignFile, CampaignFileError, load_campaign, parse_campaign
from hybridnas.search.controller import Controller, Event, LeaseLost, RunSummary
from hybridnas.search.lease import Lease
from hybridnas.search.scheduler import Run, Scheduler, rung_steps
from hybridnas.search.strategies import (
    STRATEGIES,
    GridSearch,
    Observation,
    Proposal,
    RandomSearch,
    RegularizedEvolution,
    Strategy,
    make_strategy,
)

__all__ = [
    "STRATEGIES",
    "Campaign",
    "CampaignFile",
    "CampaignFileError",
    "CampaignRun",
    "Controller",
    "Event",
    "GridSearch",
    "Lease",
    "LeaseLost",
    "Observation",
    "Proposal",
    "RandomSearch",
    "RegularizedEvolution",
    "Run",
    "RunSummary",
    "Scheduler",
    "Strategy",
    "load_campaign",
    "make_strategy",
    "open_campaign",
    "parse_campaign",
    "run_campaign",
    "rung_steps",
]
