"""Organization policies and consortium configuration: models, loading, compatibility."""

from ._compat import compatibility_violations as compatibility_violations
from ._compat import require_compatible as require_compatible
from ._load import dump_yaml as dump_yaml
from ._load import load_any as load_any
from ._load import load_consortium_config as load_consortium_config
from ._load import load_organization_policy as load_organization_policy
from ._load import parse_policy as parse_policy
from ._load import policy_hash as policy_hash
from ._models import Accountant as Accountant
from ._models import AdapterSpec as AdapterSpec
from ._models import ClusteringSpec as ClusteringSpec
from ._models import ConsortiumConfig as ConsortiumConfig
from ._models import FedAMoLESpec as FedAMoLESpec
from ._models import Method as Method
from ._models import ModelSpec as ModelSpec
from ._models import NoiseSource as NoiseSource
from ._models import OrganizationPolicy as OrganizationPolicy
from ._models import PersonalizationSpec as PersonalizationSpec
from ._models import PrivacyBudget as PrivacyBudget
from ._models import SecureAggregationMode as SecureAggregationMode
from ._models import SecureAggregationSpec as SecureAggregationSpec
from ._models import TierSpec as TierSpec
from ._models import TrainingLimits as TrainingLimits
from .errors import IncompatiblePolicyError as IncompatiblePolicyError
from .errors import PolicyError as PolicyError

__all__ = [
    "Accountant",
    "AdapterSpec",
    "ClusteringSpec",
    "ConsortiumConfig",
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
    "dump_yaml",
    "load_any",
    "load_consortium_config",
    "load_organization_policy",
    "parse_policy",
    "policy_hash",
    "require_compatible",
]
