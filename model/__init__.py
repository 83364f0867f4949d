"""What organizations and the server must agree on about the model, and nothing else.

The base model and its own tokenizer, loaded offline (architectures by `model_type`, the
tokenizer's fingerprint); the frozen-A LoRA adapters cut into blocks (ids, order, tiers,
`tier_mask`, the head blocks) and their public starting values (`initial_block_state`,
`initial_mole_state`: from the model's structure, without its weights); the K cluster
adapters the server releases and their byte format; FedAMoLE's mixture of LoRA experts, its
block layout and its release format. `fedhft.sdk` trains these models; `fedhft.aggregator`
only reads their layout and moves their block values (ARCHITECTURE.md).
"""

from ._adapters import DEFAULT_CAUSAL_TARGETS as DEFAULT_CAUSAL_TARGETS
from ._adapters import HEAD_BIAS as HEAD_BIAS
from ._adapters import HEAD_BLOCKS as HEAD_BLOCKS
from ._adapters import HEAD_WEIGHT as HEAD_WEIGHT
from ._adapters import Block as Block
from ._adapters import MaskedAdapterModel as MaskedAdapterModel
from ._adapters import adapter_layout as adapter_layout
from ._adapters import causal_layout as causal_layout
from ._adapters import consortium_layout as consortium_layout
from ._adapters import export_peft as export_peft
from ._adapters import frozen_a as frozen_a
from ._adapters import get_block_state as get_block_state
from ._adapters import set_block_state as set_block_state
from ._adapters import tier_blocks as tier_blocks
from ._adapters import tier_mask as tier_mask
from ._architectures import default_target_modules as default_target_modules
from ._base import (
    MeanPoolingBertForSequenceClassification as MeanPoolingBertForSequenceClassification,
)
from ._base import base_config as base_config
from ._base import base_skeleton as base_skeleton
from ._base import build_base_model as build_base_model
from ._cache import cache_root as cache_root
from ._causal import CausalAdapterModel as CausalAdapterModel
from ._clusters import ClusterAdapters as ClusterAdapters
from ._codec import canonical_safetensors as canonical_safetensors
from ._codec import decode_clusters as decode_clusters
from ._codec import encode_clusters as encode_clusters
from ._codec import safetensors_metadata as safetensors_metadata
from ._initial import initial_block_state as initial_block_state
from ._initial import initial_mole_state as initial_mole_state
from ._initial import sketch_dimension as sketch_dimension
from ._mole import CausalMoLEModel as CausalMoLEModel
from ._mole import MoLEBase as MoLEBase
from ._mole import MoLELinear as MoLELinear
from ._mole import MoLEModel as MoLEModel
from ._mole import expert_a as expert_a
from ._mole import expert_block_id as expert_block_id
from ._mole import install_mole as install_mole
from ._mole import router_block_id as router_block_id
from ._mole import shared_block_id as shared_block_id
from ._mole_release import MoLERelease as MoLERelease
from ._mole_release import decode_release as decode_release
from ._mole_release import encode_release as encode_release
from ._mole_release import upload_blocks as upload_blocks
from ._sources import SMOLLM2_INSTALL as SMOLLM2_INSTALL
from ._sources import minilm_path as minilm_path
from ._sources import model_location as model_location
from ._sources import smollm2_gguf as smollm2_gguf
from ._tokenizer import check_tokenizer as check_tokenizer
from ._tokenizer import load_tokenizer as load_tokenizer
from ._tokenizer import tokenizer_fingerprint as tokenizer_fingerprint
from .errors import AdapterError as AdapterError
from .errors import MixtureError as MixtureError
from .errors import ModelError as ModelError
from .errors import ModelSourceError as ModelSourceError
from .errors import ReleaseFormatError as ReleaseFormatError
from .errors import TokenizerMismatchError as TokenizerMismatchError

__all__ = [
    "DEFAULT_CAUSAL_TARGETS",
    "HEAD_BIAS",
    "HEAD_BLOCKS",
    "HEAD_WEIGHT",
    "SMOLLM2_INSTALL",
    "AdapterError",
    "Block",
    "CausalAdapterModel",
    "CausalMoLEModel",
    "ClusterAdapters",
    "MaskedAdapterModel",
    "MeanPoolingBertForSequenceClassification",
    "MixtureError",
    "MoLEBase",
    "MoLELinear",
    "MoLEModel",
    "MoLERelease",
    "ModelError",
    "ModelSourceError",
    "ReleaseFormatError",
    "TokenizerMismatchError",
    "adapter_layout",
    "base_config",
    "base_skeleton",
    "build_base_model",
    "cache_root",
    "canonical_safetensors",
    "causal_layout",
    "check_tokenizer",
    "consortium_layout",
    "decode_clusters",
    "decode_release",
    "default_target_modules",
    "encode_clusters",
    "encode_release",
    "expert_a",
    "expert_block_id",
    "export_peft",
    "frozen_a",
    "get_block_state",
    "initial_block_state",
    "initial_mole_state",
    "install_mole",
    "load_tokenizer",
    "minilm_path",
    "model_location",
    "router_block_id",
    "safetensors_metadata",
    "set_block_state",
    "shared_block_id",
    "sketch_dimension",
    "smollm2_gguf",
    "tier_blocks",
    "tier_mask",
    "tokenizer_fingerprint",
    "upload_blocks",
]
