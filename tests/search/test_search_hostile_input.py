"""Malformed and extreme campaign files, each through `hybridnas campaign launch`: exit 2, a message naming
the field (or the file and line), no traceback, nothing written to the store, and no training started."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import hybridnas.search.campaign as campaign_module
from hybridnas.cli import app
from hybridnas.search.campaign import CampaignFileError, check_size, parse_campaign, read_campaign_yaml

INF, NAN = math.inf, math.nan
GiB = 1 << 30
#: What the size checks see as this machine's memory, so the cases do not depend on the machine running them.
FAKE_MEMORY = 8 * GiB

#: A valid campaign that would train (tiny), so every case below differs from it in one way only.
BASE: dict[str, Any] = {
    "name": "hostile",
    "seed": 0,
    "task": {"name": "mqar", "vocab_size": 32, "seq_len": 24, "num_kv_pairs": 3, "num_train": 64, "num_test": 16},
    "space": {"d_model": [16], "n_layers": [2], "n_heads": [2], "hybrid": {"ratio": [1], "linear_mixer": ["gla"]}},
    "training": {"steps": 2, "batch_size": 8, "eval_batch_size": 16},
    "search": {"strategy": "random", "budget": 1},
    "execution": {"executor": "inprocess", "workers": 1, "timeout_s": 60},
}
BASE_TEXT = yaml.safe_dump(BASE, sort_keys=False)


def with_(**changes: Any) -> bytes:
    """BASE's YAML with nested keys set: `training__lr=x` sets training.lr to x."""
    cfg = copy.deepcopy(BASE)
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return yaml.safe_dump(cfg, sort_keys=False).encode()


def text(s: str) -> bytes:
    return s.encode()


def plus(extra: str) -> bytes:
    """BASE's YAML with raw lines appended (for what yaml.safe_dump cannot write: tags, aliases, duplicates)."""
    return (BASE_TEXT + extra).encode()


def suite(*members: Any) -> bytes:
    return with_(task={"name": "suite", "members": list(members)})


MQAR = {"name": "mqar", "vocab_size": 32, "seq_len": 24, "num_kv_pairs": 3, "num_train": 64, "num_test": 16}
BILLION_LAUGHS = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(9)
)

# (id, file content (bytes) or a special path, text the output must contain)
CASES: list[tuple[str, bytes | str, str]] = [
    # --- the file and its encoding ---------------------------------------------------------------
    ("missing-file", "<missing>", "file:"),
    ("directory", "<directory>", "file:"),
    ("utf16-bom", BASE_TEXT.encode("utf-16"), "not UTF-8 text"),
    ("utf16-le-no-bom", BASE_TEXT.encode("utf-16-le"), "not UTF-8 text"),
    ("utf16-be-bom", b"\xfe\xff" + BASE_TEXT.encode("utf-16-be"), "not UTF-8 text"),
    ("utf32", BASE_TEXT.encode("utf-32"), "not UTF-8 text"),
    ("latin1-byte", (BASE_TEXT + "# café\n").encode("latin-1"), "not UTF-8 text"),
    ("nul-byte", plus("seed: 1\x00\n"), "not UTF-8 text"),
    ("utf8-bom-then-bad-field", b"\xef\xbb\xbf" + with_(search__budget=0), "search.budget"),
    ("empty-file", b"", "is empty"),
    ("only-comments", b"# nothing here\n\n", "is empty"),
    ("oversized-file", b"name: x\n#" + b"x" * (1 << 20) + b"\n", "file:"),
    ("control-character", plus("seed: 1\x07\n"), "yaml: line"),
    # --- YAML that is malformed or must not be trusted -------------------------------------------
    ("unclosed-bracket", text("name: [unclosed\n"), "yaml: line"),
    ("tab-indent", text("name: x\n\ttask: 3\n"), "yaml: line 2"),
    ("two-documents", plus("---\nname: other\n"), "yaml: line"),
    ("top-level-list", text("- name: x\n- name: y\n"), "mapping"),
    ("top-level-scalar", text("just a string\n"), "mapping"),
    ("duplicate-top-key", plus("name: again\n"), "name: duplicate key"),
    ("duplicate-nested-key", plus("hardware:\n  context_len: 64\n  context_len: 128\n"), "hardware.context_len: duplicate key"),
    (
        "duplicate-deep-key",
        text(BASE_TEXT.replace("    linear_mixer:\n", "    gate: [none]\n    gate: [swish]\n    linear_mixer:\n")),
        "space.hybrid.gate: duplicate key",
    ),
    (
        "duplicate-key-in-list-item",
        text(BASE_TEXT.split("task:")[0] + "task:\n  name: suite\n  members:\n  - {name: mqar, weight: 1, weight: 2}\n"
             + "space:" + BASE_TEXT.split("space:")[1]),
        "task.members[0].weight: duplicate key",
    ),
    ("python-object-tag", plus("objective: !!python/object/apply:os.system ['echo pwned']\n"), "objective: line"),
    ("python-name-tag", text(BASE_TEXT.replace("seed: 0", "seed: !!python/name:os.system ''")), "seed: line"),
    ("custom-tag", text(BASE_TEXT.replace("budget: 1", "budget: !big 1")), "search.budget: line"),
    ("billion-laughs", plus(BILLION_LAUGHS), "expands to more than"),
    ("recursive-alias", plus("loop: &loop [*loop]\n"), "nested deeper than"),
    ("deep-flow-nesting", plus("deep: " + "[" * 5000 + "]" * 5000 + "\n"), "nested deeper than"),
    ("deep-block-nesting", plus("deep:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)) + "  " * 200 + "v: 1\n"), "nested deeper than"),
    ("boolean-key", plus("on: 3\n"), "reads as True"),
    ("integer-key", plus("1: 3\n"), "key '1'"),
    ("list-key", plus("? [a, b]\n: 3\n"), "a key must be a plain name"),
    ("null-section", text(BASE_TEXT.replace("search:\n  strategy: random\n  budget: 1\n", "search:\n")), "search"),
    ("list-section", with_(training=[1, 2]), "training"),
    ("task-as-string", with_(task="mqar"), "task"),
    # --- unknown keys, per section ---------------------------------------------------------------
    ("unknown-top", with_(serach={"budget": 2}), "serach: unknown field"),
    ("unknown-task", with_(task__vocab=32), "task.vocab"),
    ("unknown-space", with_(space__d_models=[16]), "space.d_models: unknown field"),
    ("unknown-space-hybrid", with_(space__hybrid__ratios=[1]), "space.hybrid.ratios: unknown field"),
    ("unknown-training", with_(training__stepz=3), "training.stepz"),
    ("unknown-search", with_(search__budgett=3), "search.budgett: unknown field"),
    ("unknown-halving", with_(search__successive_halving={"etaa": 3}), "search.successive_halving.etaa: unknown field"),
    ("unknown-execution", with_(execution__worker=2), "execution.worker: unknown field"),
    ("unknown-hardware", with_(hardware={"ctx": 64}), "hardware.ctx: unknown field"),
    ("unknown-objective", with_(objective={"metrc": "loss"}), "objectives[0].metrc: unknown field"),
    ("unknown-constraint", with_(constraints=[{"metric": "cost_params", "maximum": 5}]), "constraints[0].maximum: unknown field"),
    # --- wrong types: booleans, strings, inf and nan are not numbers ------------------------------
    ("budget-true", with_(search__budget=True), "search.budget"),
    ("budget-string", with_(search__budget="3"), "search.budget"),
    ("budget-float", with_(search__budget=3.0), "search.budget"),
    ("steps-true", with_(training__steps=True), "training.steps"),
    ("steps-string", with_(training__steps="300"), "training.steps"),
    ("lr-string", with_(training__lr="3e-3"), "training.lr"),
    ("lr-inf", with_(training__lr=INF), "training.lr"),
    ("lr-nan", with_(training__lr=NAN), "training.lr"),
    ("lr-list-inf", with_(training__lr=[1e-3, INF]), "training.lr"),
    ("weight-decay-inf", with_(training__weight_decay=INF), "training.weight_decay"),
    ("target-nan", with_(training__target={"metric": "accuracy", "value": NAN}), "training.target.value"),
    ("crossover-nan", with_(search__crossover_prob=NAN), "search.crossover_prob"),
    ("timeout-inf", with_(execution__timeout_s=INF), "execution.timeout_s"),
    ("gpus-nan", with_(execution__gpus_per_worker=NAN), "execution.gpus_per_worker"),
    ("workers-float", with_(execution__workers=2.5), "execution.workers"),
    ("constraint-max-inf", with_(constraints=[{"metric": "cost_params", "max": INF}]), "constraints[0].max"),
    ("constraint-min-string", with_(constraints=[{"metric": "cost_params", "min": "0.5"}]), "constraints[0].min"),
    ("seed-true", with_(seed=True), "seed"),
    ("seed-negative", with_(seed=-1), "seed"),
    ("seed-float", with_(seed=1.5), "seed"),
    ("name-number", with_(name=123), "name"),
    ("d-model-true", with_(space__d_model=[True]), "space.d_model[0]"),
    ("d-model-not-list", with_(space__d_model=16), "space.d_model"),
    ("mlp-ratio-nan", with_(space__mlp_ratio=[NAN]), "space.mlp_ratio[0]"),
    ("expand-k-inf", with_(space__expand_k=[INF]), "space.expand_k[0]"),
    ("short-conv-yes-string", with_(space__hybrid__short_conv=["yes"]), "space.hybrid.short_conv[0]"),
    ("ratio-true", with_(space__hybrid__ratio=[True]), "space.hybrid.ratio"),
    ("vocab-true", with_(task__vocab_size=True), "task.vocab_size"),
    ("vocab-string", with_(task__vocab_size="32"), "task.vocab_size"),
    ("power-a-nan", with_(task__power_a=NAN), "task.power_a"),
    ("power-a-inf", with_(task__power_a=INF), "task.power_a"),
    ("context-len-true", with_(hardware={"context_len": True}), "hardware.context_len"),
    ("repeats-string", with_(hardware={"repeats": "3"}), "hardware.repeats"),
    # --- out of range ---------------------------------------------------------------------------
    ("budget-zero", with_(search__budget=0), "search.budget"),
    ("population-one", with_(search__population=1), "search.population"),
    ("eta-one", with_(search__successive_halving={"eta": 1}), "search.successive_halving.eta"),
    ("top-k-zero", with_(search__reevaluate={"top_k": 0}), "search.reevaluate.top_k"),
    ("warmup-frac", with_(training__warmup_frac=1.5), "training.warmup_frac"),
    ("val-fraction", with_(training__val_fraction=0.9), "training.val_fraction"),
    ("lr-negative", with_(training__lr=-1.0), "training.lr"),
    ("lr-empty", with_(training__lr=[]), "training.lr"),
    ("lr-repeated", with_(training__lr=[1e-3, 1e-3]), "training.lr"),
    ("timeout-zero", with_(execution__timeout_s=0), "execution.timeout_s"),
    ("kv-pairs-zero", with_(task__num_kv_pairs=0), "task.num_kv_pairs"),
    ("vocab-too-small", with_(task__vocab_size=8), "task.vocab_size"),
    ("name-symbols", with_(name="bad name!"), "name"),
    ("name-too-long", with_(name="x" * 200), "name"),
    ("name-console-markup", with_(name="[red]x[/red]"), "'[red]x[/red]' is not allowed"),
    ("heads-do-not-divide", with_(space__n_heads=[3]), "space.n_heads"),
    ("d-model-empty", with_(space__d_model=[]), "space.d_model"),
    ("d-model-zero", with_(space__d_model=[0]), "space.d_model"),
    ("objectives-empty", with_(objectives=[]), "objectives"),
    ("constraint-min-over-max", with_(constraints=[{"metric": "cost_params", "min": 5, "max": 1}]), "constraints[0]"),
    # --- hard bounds on sizes (10^9 where a typo adds zeros) --------------------------------------
    ("vocab-1e9", with_(task__vocab_size=10**9), "task.vocab_size"),
    ("num-train-1e9", with_(task__num_train=10**9), "task.num_train"),
    ("num-test-1e9", with_(task__num_test=10**9), "task.num_test"),
    ("seq-len-1e9", with_(task__seq_len=10**9), "task.seq_len"),
    ("kv-pairs-1e9", with_(task__num_kv_pairs=10**9), "task.num_kv_pairs"),
    ("n-layers-1e9", with_(space__n_layers=[10**9]), "space.n_layers"),
    ("d-model-1e9", with_(space__d_model=[10**9]), "space.d_model"),
    ("n-heads-1e9", with_(space__n_heads=[10**9]), "space.n_heads"),
    ("window-1e9", with_(space__window=10**9), "space.window"),
    ("choices-300", with_(space__mlp_ratio=[1 + i / 100 for i in range(300)]), "space.mlp_ratio"),
    ("steps-1e9", with_(training__steps=10**9), "training.steps"),
    ("batch-1e9", with_(training__batch_size=10**9), "training.batch_size"),
    ("eval-batch-1e9", with_(training__eval_batch_size=10**9), "training.eval_batch_size"),
    ("eval-every-1e9", with_(training__eval_every=10**9), "training.eval_every"),
    ("lr-sweep-100", with_(training__lr=[1e-4 * (i + 1) for i in range(100)]), "training.lr"),
    ("context-len-1e9", with_(hardware={"context_len": 10**9}), "hardware.context_len"),
    ("hardware-batch-1e9", with_(hardware={"batch_size": 10**9}), "hardware.batch_size"),
    ("decode-tokens-1e9", with_(hardware={"decode_tokens": 10**9}), "hardware.decode_tokens"),
    ("budget-1e9", with_(search__budget=10**9), "search.budget"),
    ("population-1e9", with_(search__population=10**9), "search.population"),
    ("rungs-1e9", with_(search__successive_halving={"rungs": 10**9}), "search.successive_halving.rungs"),
    ("workers-1e9", with_(execution__workers=10**9), "execution.workers"),
    ("seed-2-64", with_(seed=2**64), "seed"),
    ("byte-lm-seq-len-1e9", with_(task={"name": "byte_lm", "seq_len": 10**9}), "task.seq_len"),
    ("compression-symbols-1e9", with_(task={"name": "compression", "num_symbols": 10**9}), "task.num_symbols"),
    ("copy-tokens-1e9", with_(task={"name": "selective_copying", "num_tokens_to_copy": 10**9}), "task.num_tokens_to_copy"),
    ("memorization-vocab-1e9", with_(task={"name": "memorization", "vocab_size": 10**9}), "task.vocab_size"),
    # --- within the bounds, but one evaluation cannot fit this (8 GiB) machine or its time limit ---
    ("estimate-num-train", with_(task={**MQAR, "seq_len": 1024, "num_train": 10**7}), "task.num_train"),
    ("estimate-seq-len", with_(task={**MQAR, "seq_len": 1 << 16, "num_train": 10_000, "num_test": 1000}), "task.seq_len"),
    ("estimate-vocab", with_(task={**MQAR, "vocab_size": 1 << 20}), "task.vocab_size"),
    ("estimate-d-model", with_(space__d_model=[8192], space__n_layers=[8]), "space.d_model"),
    ("estimate-n-layers", with_(space__d_model=[2048], space__n_layers=[256]), "space.n_layers"),
    ("estimate-batch", with_(training__batch_size=1 << 16, space__d_model=[256], space__n_layers=[8]), "training.batch_size"),
    ("estimate-steps", with_(training__steps=10**7, training__batch_size=4096), "training.steps"),
    ("estimate-context-len", with_(hardware={"context_len": 1 << 20, "batch_size": 64}), "hardware.context_len"),
    (
        "estimate-time",
        with_(space__d_model=[1024], space__n_layers=[16], training__steps=10**6, execution__timeout_s=60),
        "execution.timeout_s",
    ),
    ("estimate-suite-member", suite({**MQAR, "seq_len": 1024, "num_train": 10**7}), "task.members[0].num_train"),
    # --- suites ---------------------------------------------------------------------------------
    ("suite-no-members", with_(task={"name": "suite", "members": []}), "task.members"),
    ("suite-members-mapping", with_(task={"name": "suite", "members": {"a": MQAR}}), "task.members"),
    ("suite-in-suite", suite({"name": "suite", "members": [MQAR]}), "task.members[0].name"),
    ("suite-member-unknown-option", suite({**MQAR, "vocab": 3}), "task.members[0].vocab"),
    ("suite-member-name-list", suite({"name": ["mqar"]}), "task.members[0].name"),
    ("suite-member-weight-nan", suite({**MQAR, "weight": NAN}), "task.members[0].weight"),
    ("suite-member-weight-true", suite({**MQAR, "weight": True}), "task.members[0].weight"),
    ("suite-duplicate-member-keys", suite(MQAR, MQAR), "task.members[1].key"),
    ("suite-too-many-members", suite(*[{**MQAR, "key": f"m{i}"} for i in range(100)]), "task.members"),
    # --- names that are not in a registry ---------------------------------------------------------
    ("task-name", with_(task={"name": "imagenet"}), "task.name"),
    ("task-name-list", with_(task={"name": ["mqar"]}), "task.name"),
    ("mqar-preset", with_(task={"name": "mqar", "preset": "zoology-9999"}), "task.preset"),
    ("strategy", with_(search__strategy="annealing"), "search.strategy"),
    ("executor", with_(execution__executor="slurm"), "execution.executor"),
    ("replay-without-table", with_(execution__executor="replay"), "replay_table"),
    ("objective-direction", with_(objective={"metric": "accuracy", "direction": "up"}), "objectives[0].direction"),
    ("objective-metric", with_(objective={"metric": "accuraccy"}), "objectives[0].metric"),
    ("constraint-metric", with_(constraints=[{"metric": "cost_parms", "max": 5}]), "constraints[0].metric"),
    ("linear-mixer", with_(space__hybrid__linear_mixer=["transformer"]), "space.hybrid.linear_mixer"),
    ("full-mixer", with_(space__hybrid__full_mixer=["gla"]), "space.hybrid.full_mixer"),
    ("placement", with_(space__hybrid__placement=["LXA"]), "space.hybrid.placement"),
    ("mlp", with_(space__mlp=["gelu3"]), "space.mlp"),
    ("norm", with_(space__norm=["batchnorm"]), "space.norm"),
    ("feature-map", with_(space__feature_map="relu9"), "space.feature_map"),
    ("precision", with_(training__precision="fp16"), "training.precision"),
]


@pytest.fixture
def machine_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(campaign_module, "machine_memory_bytes", lambda: FAKE_MEMORY)


def _write(tmp_path: Path, content: bytes | str) -> Path:
    if content == "<missing>":
        return tmp_path / "nope.yaml"
    if content == "<directory>":
        (tmp_path / "adir.yaml").mkdir()
        return tmp_path / "adir.yaml"
    assert isinstance(content, bytes)
    path = tmp_path / "campaign.yaml"
    path.write_bytes(content)
    return path


def test_base_campaign_is_valid(machine_memory: None) -> None:
    """Each case changes one thing in BASE, so BASE itself must pass."""
    check_size(parse_campaign(copy.deepcopy(BASE)))


def test_at_least_74_cases() -> None:
    assert len(CASES) >= 74
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("content, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_campaign_file(
    tmp_path: Path, machine_memory: None, monkeypatch: pytest.MonkeyPatch, content: bytes | str, expected: str
) -> None:
    # Any training would mean a case got past validation: make it loud instead of slow.
    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an evaluation started")

    monkeypatch.setattr("hybridnas.search.cli._run", no_training)
    path = _write(tmp_path, content)
    db = tmp_path / "x.db"
    result = CliRunner().invoke(
        app, ["campaign", "launch", str(path), "--store", f"sqlite:///{db}", "--executor", "inprocess", "--no-export"]
    )
    output = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    assert expected in output, output
    assert not db.exists(), "the file was refused after the store was opened"


def _huge(tmp_path: Path) -> Path:
    path = tmp_path / "huge.yaml"
    path.write_bytes(with_(task={**MQAR, "seq_len": 1024, "num_train": 10**7}))
    return path


def test_no_size_check_lets_a_valid_but_huge_file_through(tmp_path: Path, machine_memory: None) -> None:
    path = _huge(tmp_path)
    refused = CliRunner().invoke(app, ["campaign", "validate", str(path)])
    assert refused.exit_code == 2 and "--no-size-check" in " ".join(refused.output.split())
    passed = CliRunner().invoke(app, ["campaign", "validate", str(path), "--no-size-check"])
    assert passed.exit_code == 0, passed.output
    assert "ok: hostile" in passed.output and "not checked" in passed.output


def test_no_size_check_reaches_launch(tmp_path: Path, machine_memory: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the flag, launch creates the campaign and hands it to the controller (stopped there: nothing trains)."""
    launched: list[str] = []
    monkeypatch.setattr("hybridnas.search.cli._run", lambda store, campaign, *a, **k: launched.append(campaign.name))
    db = tmp_path / "x.db"
    args = ["campaign", "launch", str(_huge(tmp_path)), "--store", f"sqlite:///{db}", "--executor", "inprocess", "--no-export"]
    assert CliRunner().invoke(app, args).exit_code == 2 and not launched
    result = CliRunner().invoke(app, [*args, "--no-size-check"])
    assert result.exit_code == 0, result.output
    assert launched == ["hostile"]


@pytest.mark.parametrize("command", ["launch", "validate"])
def test_help_documents_no_size_check(command: str) -> None:
    result = CliRunner().invoke(app, ["campaign", command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--no-size-check" in result.output


def test_check_size_uses_the_given_memory() -> None:
    campaign = parse_campaign(copy.deepcopy(BASE))
    est = check_size(campaign, memory_bytes=FAKE_MEMORY)
    assert 0 < est.memory_bytes < FAKE_MEMORY and est.params > 0
    with pytest.raises(CampaignFileError) as info:
        check_size(campaign, memory_bytes=est.memory_bytes // 2)
    assert "--no-size-check" in info.value.problems[0]


def test_gpu_workers_check_host_memory_only() -> None:
    """The model and activations of a GPU worker live on the device: a big model is not refused for host memory."""
    big = {**copy.deepcopy(BASE), "space": {**BASE["space"], "d_model": [4096], "n_layers": [8]}}
    with pytest.raises(CampaignFileError, match="space.d_model"):
        check_size(parse_campaign(big), memory_bytes=FAKE_MEMORY)
    big["execution"] = {**BASE["execution"], "gpus_per_worker": 1}
    check_size(parse_campaign(big), memory_bytes=FAKE_MEMORY)


def test_merge_keys_and_utf8_bom_are_fine(tmp_path: Path) -> None:
    """Keys given next to a merge (`<<: *defaults`) override it: not duplicates. A UTF-8 BOM is allowed."""
    body = BASE_TEXT.replace("training:\n  steps: 2\n  batch_size: 8\n", "training:\n  <<: *d\n  batch_size: 4\n")
    path = tmp_path / "ok.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + ("defaults: &d {steps: 2, batch_size: 8}\n" + body).encode())
    data = read_campaign_yaml(path)
    assert data["training"] == {"steps": 2, "batch_size": 4, "eval_batch_size": 16}
