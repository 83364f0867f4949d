"""Base models loaded offline and the pooling their head reads (fedhft.model._base)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification, DistilBertConfig
from transformers import DistilBertForSequenceClassification as DistilBert

from fedhft.model import MeanPoolingBertForSequenceClassification, base_skeleton
from fedhft.policies import ModelSpec
from fedhft.sdk import build_base_model, load_tokenizer

TINY = ModelSpec(source="tiny", num_labels=3)


def test_mean_pooling_is_the_default_and_cls_keeps_the_models_own_head() -> None:
    """`pooling: mean` (default) builds the mean-pooling class; `cls` the model's own."""
    assert isinstance(build_base_model(TINY), MeanPoolingBertForSequenceClassification)
    assert isinstance(base_skeleton(TINY), MeanPoolingBertForSequenceClassification)
    cls_spec = ModelSpec(source="tiny", num_labels=3, pooling="cls")
    plain = build_base_model(cls_spec)
    assert type(plain) is BertForSequenceClassification
    assert plain.bert.pooler is not None


def test_logits_are_the_head_on_the_mean_of_the_unpadded_tokens() -> None:
    """Logits = classifier(mean of the last hidden states over tokens with mask 1)."""
    model = build_base_model(TINY)
    ids = torch.randint(1000, 20000, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    by_hand = torch.stack(
        [model.classifier(hidden[0].mean(dim=0)), model.classifier(hidden[1, :5].mean(dim=0))]
    )
    assert torch.allclose(logits, by_hand, atol=1e-6)


def test_padding_does_not_change_the_logits() -> None:
    """The same text padded to any length gives the same logits (padding is not averaged)."""
    model = build_base_model(TINY)
    tokenizer = load_tokenizer()
    short = tokenizer(["chest pain since the morning"], return_tensors="pt")
    padded = tokenizer(
        ["chest pain since the morning"], padding="max_length", max_length=24, return_tensors="pt"
    )
    with torch.no_grad():
        a = model(**short).logits
        b = model(**padded).logits
    assert padded["input_ids"].shape[1] > short["input_ids"].shape[1]
    assert torch.allclose(a, b, atol=1e-5)


def test_the_loss_is_cross_entropy_of_the_logits() -> None:
    """With labels the output carries the mean cross-entropy of its logits."""
    model = build_base_model(TINY)
    ids = torch.randint(1000, 20000, (4, 6), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 1])
    output = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    expected = torch.nn.functional.cross_entropy(output.logits, labels)
    assert torch.allclose(output.loss, expected)


def test_mean_pooling_refuses_a_model_that_is_not_bert(tmp_path: Path) -> None:
    """A non-BERT local model with `pooling: mean` fails with the field and the fix."""
    config = DistilBertConfig(
        vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=2
    )
    DistilBert(config).save_pretrained(tmp_path / "distil")
    spec = ModelSpec(source="huggingface", name=str(tmp_path / "distil"), num_labels=2)
    with pytest.raises(ValueError, match=r"model.pooling: cls"):
        build_base_model(spec)
    own = build_base_model(spec.model_copy(update={"pooling": "cls"}))
    assert isinstance(own, DistilBert)


def test_tiny_models_built_in_threads_are_the_single_threaded_model() -> None:
    """Builds in concurrent threads draw from torch's one global generator in turn, so
    each gets exactly the weights a build alone gets (the promise every process relies
    on: one seed, one tiny base)."""
    spec = ModelSpec(source="tiny", num_labels=4)
    alone = build_base_model(spec).state_dict()
    with ThreadPoolExecutor(max_workers=4) as pool:
        built = list(pool.map(lambda _: build_base_model(spec).state_dict(), range(8)))
    for state in built:
        assert state.keys() == alone.keys()
        assert all(torch.equal(state[name], alone[name]) for name in alone)
