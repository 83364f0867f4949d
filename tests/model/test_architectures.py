"""Any supported Hugging Face architecture, with its own tokenizer: one DP-SGD round, the
secure per-row average, a PEFT export that plain `transformers` reloads; decoder pooling;
the architectures and modules fedhft refuses."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, GPT2Config

from fedhft.aggregator import RoundCoordinator
from fedhft.model import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    AdapterError,
    MaskedAdapterModel,
    ModelError,
    adapter_layout,
    base_skeleton,
    build_base_model,
    decode_clusters,
    default_target_modules,
    encode_clusters,
    load_tokenizer,
    tier_mask,
    tokenizer_fingerprint,
)
from fedhft.policies import ConsortiumConfig, ModelSpec, OrganizationPolicy
from fedhft.protocol import run_secagg_in_process
from fedhft.sdk import LocalTrainer, synthetic_federation
from fedhft.sdk.participants import RoundParticipant
from fedhft.simulation import OrganizationRun, run_federation_in_process

sys.path.insert(0, str(Path(__file__).parents[1] / "aggregator"))
from federation_helpers import ORGS as TIERS
from federation_helpers import policy
from runtime_helpers import assert_per_row_averages, fast_consortium, federation_data, spying

sys.path.insert(0, str(Path(__file__).parent))
from tiny_architectures import ARCHITECTURES, LABELS

Checkpoint = Callable[[str], Path]
ORGS = ("org-a", "org-b", "org-c")
"""Three organizations: the smallest cohort a consortium may unmask (min_cohort ≥ 3)."""
DECODERS = ("llama", "qwen2", "gpt_neox", "mistral", "qwen3", "gemma", "phi")
FRESH = {"distilbert": "pre_classifier", "deberta-v2": "pooler", "modernbert": "head"}
"""Modules between encoder and head that a pretrained checkpoint lacks: `transformers`
initialises them at random on every load, so the export must carry them."""


def _own_fingerprint(folder: Path) -> str:
    spec = ModelSpec(source="huggingface", name=str(folder), num_labels=LABELS, pooling="cls")
    with pytest.raises(ModelError, match=r"tokenizer_sha256 is missing"):
        load_tokenizer(spec)
    # What the error tells the operator to pin, computed the documented way.
    return tokenizer_fingerprint(folder)


def _consortium(folder: Path, fingerprint: str, **model: Any) -> ConsortiumConfig:
    return ConsortiumConfig.model_validate(
        {
            "consortium": "arch-test",
            "model": {
                "source": "huggingface",
                "name": str(folder),
                "num_labels": LABELS,
                "pooling": "cls",
                "tokenizer_sha256": fingerprint,
                **model,
            },
            # target_modules omitted: the architecture's defaults.
            "adapter": {"rank": 2, "alpha": 4, "a_seed": 11},
            "tiers": {"full": {"layers": "all", "keep_ratio": 0.5}},
            "method": "fedhft",
            # A shared head goes through the secure sum too: with a bias or without.
            "personalization": {"head": "shared"},
            "rounds": 1,
            "training": {"learning_rate": 0.05},
            "enrollment": [{"organization": org} for org in ORGS],
        }
    )


def _policy(org: str, state: Path) -> OrganizationPolicy:
    return OrganizationPolicy.model_validate(
        {
            "organization": org,
            "consortium": "arch-test",
            "privacy": {
                "epsilon": 50.0,
                "delta": 1e-5,
                "max_grad_norm": 1.0,
                "noise_multiplier": 0.8,
                "planned_rounds": 2,
                "ledger_path": str(state / org / "ledger.json"),
            },
            "training": {"tier": "full", "batch_size": 8, "local_steps": 2, "max_seq_length": 24},
            "audit": {"log_path": str(state / org / "audit.jsonl")},
        }
    )


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_a_dp_round_sums_securely_and_the_export_reloads_in_plain_transformers(
    name: str, checkpoint: Checkpoint, tmp_path: Path
) -> None:
    """Per architecture, its own tokenizer and default targets: three organizations run a
    DP-SGD round, the masked secure sum moves the model by the clear per-row average of
    their updates, and the exported PEFT adapter gives the same logits on the plain
    `transformers` class."""
    folder = checkpoint(name)
    config = _consortium(folder, _own_fingerprint(folder))
    data = synthetic_federation(num_organizations=3, alpha=1.0, samples_per_org=24, seed=4)
    participants = {
        org: RoundParticipant(
            LocalTrainer(
                MaskedAdapterModel.from_consortium(config), _policy(org, tmp_path), config, seed=0
            ),
            data[i].train,
            state_dir=tmp_path / org / "state",
        )
        for i, org in enumerate(ORGS)
    }
    model = participants["org-a"].trainer.model
    targets = set(default_target_modules(name))
    assert {b.module for b in model.blocks if b.layer is not None} == targets
    assert (HEAD_BIAS in model.block_ids) == (name not in DECODERS)
    coordinator = RoundCoordinator(
        config,
        run_id="arch",
        initial_state=MaskedAdapterModel.from_consortium(config).get_block_state(),
        tier_blocks={"full": tier_mask(config, "full")},
    )
    clusters = coordinator.model_for_round(1)
    before = decode_clusters(encode_clusters(clusters))
    updates = {org: p.prepare(1, clusters) for org, p in participants.items()}
    for participant in participants.values():
        ledger = participant.trainer.ledger
        assert ledger is not None and [r.round for r in ledger.records] == [1]
        assert ledger.spent() > 0
    params, skipped = coordinator.session_params(
        round_number=1, attempt=1, cluster=0, participants=dict.fromkeys(ORGS, "full")
    )
    inputs = {
        org: participants[org].contributions(
            update, cluster=0, block_lengths=params.block_lengths, clip=params.clip
        )
        for org, update in updates.items()
    }
    identities = {org: Ed25519PrivateKey.generate() for org in ORGS}
    result = run_secagg_in_process(params, inputs, identities)
    coordinator.apply(
        round_number=1, participants=list(ORGS), results={0: result}, skipped={0: skipped}
    )
    after = coordinator.clusters
    checked = assert_per_row_averages(
        config, before, after, updates, tolerance_per_holder=1.0 / params.scale
    )
    assert checked == len(tier_mask(config, "full")) == len(model.block_ids)
    moved = [
        b for b in model.block_ids if b != HEAD_WEIGHT and np.abs(after.states[0][b]).max() > 0
    ]
    assert moved, "the round moved no adapter block"

    model.set_block_state(after.states[0])
    export = model.export_peft(tmp_path / "export")
    tokenizer = participants["org-a"].trainer.tokenizer
    batch = tokenizer(list(data[0].test.texts[:5]), padding=True, return_tensors="pt")
    plain = AutoModelForSequenceClassification.from_pretrained(
        str(folder), num_labels=LABELS, pad_token_id=tokenizer.pad_token_id
    )
    if name in FRESH:  # As a load from a checkpoint without them would draw them.
        with torch.no_grad():
            for parameter in plain.get_submodule(FRESH[name]).parameters():
                parameter.add_(torch.randn_like(parameter))
    reloaded = PeftModel.from_pretrained(plain, str(export))
    torch.nn.Module.eval(model.peft_model)
    torch.nn.Module.eval(reloaded)
    with torch.no_grad():
        ours = model.logits(batch["input_ids"], batch["attention_mask"])
        theirs = reloaded(**batch).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("name", DECODERS)
def test_a_decoder_classifies_its_last_text_token_whatever_the_padding(
    name: str, checkpoint: Checkpoint
) -> None:
    """Left- and right-padded batches give each text the logits it has alone: the head
    reads the last non-padding token (the pad token is the tokenizer's, or its
    end-of-sequence token when it has none)."""
    folder = checkpoint(name)
    spec = _consortium(folder, _own_fingerprint(folder)).model
    tokenizer = load_tokenizer(spec)
    model = build_base_model(spec)
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    if not ARCHITECTURES[name].pad:
        assert tokenizer.pad_token == tokenizer.eos_token
    texts = ["chest pain since the morning and dizzy", "late card payment"]
    with torch.no_grad():
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
        for side in ("left", "right"):
            tokenizer.padding_side = side
            batch = tokenizer(texts, padding="max_length", max_length=40, return_tensors="pt")
            assert int(batch["attention_mask"].sum(dim=1).max()) < 40
            assert torch.allclose(model(**batch).logits, alone, atol=1e-4), side


# ----------------------------------------------------------------------------- refusals


def _gpt2(folder: Path) -> Path:
    GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, num_labels=2).save_pretrained(folder)
    return folder


def _skeleton_layout(spec: ModelSpec, targets: list[str] | None, **tiers: Any) -> None:
    config = ConsortiumConfig.model_validate(
        {
            "consortium": "arch-test",
            "model": spec.model_dump(),
            "adapter": {"target_modules": targets, "rank": 2, "alpha": 4, "a_seed": 1},
            "tiers": tiers or {"full": {}},
            "rounds": 1,
            "enrollment": [{"organization": "org-a"}],
        }
    )
    for tier in config.tiers:
        tier_mask(config, tier)


def test_gpt2_conv1d_is_refused_at_config_load_naming_the_module(tmp_path: Path) -> None:
    """GPT-2's attention is a `Conv1D`, which Opacus has no per-sample gradient for: the
    layout (what the server computes from the config alone) refuses it by name."""
    spec = ModelSpec(
        source="huggingface", name=str(_gpt2(tmp_path / "gpt2")), num_labels=2, pooling="cls"
    )
    with pytest.raises(AdapterError, match=r"'transformer\.h\.0\.attn\.c_attn' is a .*Conv1D"):
        _skeleton_layout(spec, ["c_attn"])


def test_an_unknown_architecture_is_refused_with_the_supported_ones(tmp_path: Path) -> None:
    """Without target modules, an architecture fedhft has no row for is named and refused."""
    spec = ModelSpec(
        source="huggingface", name=str(_gpt2(tmp_path / "gpt2")), num_labels=2, pooling="cls"
    )
    with pytest.raises(ModelError, match=r"unknown architecture 'gpt2'.*llama"):
        _skeleton_layout(spec, None)


def test_a_target_module_the_model_lacks_is_refused_with_its_linear_modules(
    checkpoint: Checkpoint,
) -> None:
    """A target no module has is named, with the model's linear module names."""
    folder = checkpoint("llama")
    spec = _consortium(folder, _own_fingerprint(folder)).model
    with pytest.raises(
        AdapterError, match=r"\['query'\] match no linear layer of the 'llama'.*'q_proj'"
    ):
        _skeleton_layout(spec, ["q_proj", "query"])


def test_a_tier_naming_layers_or_modules_the_model_lacks_is_refused(
    checkpoint: Checkpoint,
) -> None:
    """Tiers address layers 0..n-1 (negative from the top) and the adapter's modules."""
    folder = checkpoint("qwen2")
    spec = _consortium(folder, _own_fingerprint(folder)).model
    _skeleton_layout(spec, None, top={"layers": [-1], "modules": ["v_proj"]})
    with pytest.raises(AdapterError, match=r"tier layer 2 does not exist in a model of 2 layers"):
        _skeleton_layout(spec, None, top={"layers": [2]})
    with pytest.raises(AdapterError, match=r"tier modules \['value'\] are not adapter targets"):
        _skeleton_layout(spec, None, top={"modules": ["value"]})


def test_the_server_layout_of_a_biasless_head_matches_the_clients_blocks(
    checkpoint: Checkpoint,
) -> None:
    """Llama's `score` has no bias: the weightless layout and the trained model agree on
    the blocks (no `head.bias`), so the initial state and uploads line up."""
    folder = checkpoint("llama")
    config = _consortium(folder, _own_fingerprint(folder))
    model = MaskedAdapterModel.from_consortium(config)
    skeleton = base_skeleton(config.model)
    layout = adapter_layout(skeleton, config.adapter)
    assert tuple(b.block_id for b in layout) == model.block_ids
    assert model.block_ids[-1] == HEAD_WEIGHT and HEAD_BIAS not in model.block_ids


@pytest.mark.slow
def test_a_two_tier_llama_federation_moves_by_the_secure_per_row_averages(
    checkpoint: Checkpoint, tmp_path: Path
) -> None:
    """Four organizations on two tiers (the edge one trains the top layer's `v_proj`
    only), two clusters, two rounds, a shared head without bias, through the real
    coordinator and masked secure sums: every cluster adapter moves by the clear per-row
    average of its holders' updates each round."""
    folder = checkpoint("llama")
    config = fast_consortium(
        model={
            "source": "huggingface",
            "name": str(folder),
            "num_labels": LABELS,
            "pooling": "cls",
            "tokenizer_sha256": tokenizer_fingerprint(folder),
        },
        adapter={"rank": 2, "alpha": 4, "a_seed": 3},
        tiers={
            "edge": {"layers": [-1], "modules": ["v_proj"], "keep_ratio": 0.5},
            "full": {"layers": "all", "keep_ratio": 0.5},
        },
        personalization={"head": "shared"},
    )
    assert tier_mask(config, "edge") == ("layers.1.self_attn.v_proj", HEAD_WEIGHT)
    coordinator = RoundCoordinator(
        config,
        run_id="llama",
        initial_state=MaskedAdapterModel.from_consortium(config).get_block_state(),
        tier_blocks={tier: tier_mask(config, tier) for tier in config.tiers},
    )
    data = federation_data()
    organizations = {
        org: OrganizationRun(
            RoundParticipant(
                LocalTrainer(
                    MaskedAdapterModel.from_consortium(config),
                    policy(org, tmp_path),
                    config,
                    seed=0,
                ),
                data[org].train,
                state_dir=tmp_path / org / "state",
            ),
            tier=tier,
            test=data[org].test,
        )
        for org, tier in TIERS.items()
    }
    with spying() as spy:
        result = run_federation_in_process(config, coordinator, organizations, rounds=2)
    after = {1: spy.released[2], 2: result.coordinator.clusters}
    for round_number in (1, 2):
        assert HEAD_BIAS not in spy.released[round_number].states[0]
        checked = assert_per_row_averages(
            config,
            spy.released[round_number],
            after[round_number],
            spy.updates[round_number],
            tolerance_per_holder=1.0 / config.secure_aggregation.scale,
        )
        assert checked > 0
