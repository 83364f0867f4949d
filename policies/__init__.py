"""Organization policies and consortium configuration: models, loading, compatibility."""

from ._compat import compatibility_violations as compatibility_violations
from ._compat import require_compatible as require_compatible
from ._load import consortium_hash as consortium_hash
from ._load import dump_yaml as dump_yaml
from ._load import load_any as load_any
from ._load import load_consortium_config as load_consortium_config
from ._load import load_organization_policy as load_organization_policy
from ._load import parse_policy as parse_policy
from ._load import policy_hash as policy_hash
from ._schema import CAUSAL_TARGETS as CAUSAL_TARGETS
from ._schema import Accountant as Accountant
from ._schema import AdapterSpec as AdapterSpec
from ._schema import ClusteringSpec as ClusteringSpec
from ._schema import ConsortiumConfig as ConsortiumConfig
from ._schema import EvaluationSpec as EvaluationSpec
from ._schema import FedAMoLESpec as FedAMoLESpec
from ._schema import Method as Method
from ._schema import ModelSpec as ModelSpec
from ._schema import NoiseSource as NoiseSource
from ._schema import OrganizationPolicy as OrganizationPolicy
from ._schema import PersonalizationSpec as PersonalizationSpec
from ._schema import PrivacyBudget as PrivacyBudget
from ._schema import SecureAggregationMode as SecureAggregationMode
from ._schema import SecureAggregationSpec as SecureAggregationSpec
from ._schema import TierSpec as TierSpec
from ._schema import TrainingLimits as TrainingLimits
from .errors import IncompatiblePolicyError as IncompatiblePolicyError
from .errors import PolicyError as PolicyError

__all__ = [
    "CAUSAL_TARGETS",
    "Accountant",
    "AdapterSpec",
    "ClusteringSpec",
    "ConsortiumConfig",
    "EvaluationSpec",
    "FedAMoLESpec",
    "IncompatiblePolicyError",
    "Method",
    "ModelSpec",
    "NoiseSource",
    "OrganizationPolicy",
    "PersonalizationSpec",
    "PolicyError",
    "PrivacyBudget",
    "SecureAggregationMode",
    "SecureAggregationSpec",
    "TierSpec",
    "TrainingLimits",
    "compatibility_violations",
    "consortium_hash",
    "dump_yaml",
    "load_any",
    "load_consortium_config",
    "load_organization_policy",
    "parse_policy",
    "policy_hash",
    "require_compatible",
]
