"""The ``compress`` stage: posterior-guided mixed precision, pruning and weight sharing.

``deploy_plan(src, dst, Plan(...), calib=...)`` compiles a per-layer precision plan (Bayesian
Bits style: bits per layer, pruned channels, learned ranges); ``deploy_share(src, dst,
ShareConfig(...))`` shares weights from the posterior (probabilistic weight fixing) and stores
them as codebook + indices; ``auto_plan`` / ``search`` plan from the posterior under
``validate``'s gates; ``compress`` is the stage function the CLI and ``qbnn run`` call.
Modules: ``plan`` (schema), ``layers`` (posterior tensors in the graph), ``lowbit`` (b-bit
storage, Q/DQ), ``prune``, ``share``, ``sigma`` (mean-field sigma on a log grid or per channel,
pruning by |mu| / sigma), ``drawn`` (weights drawn at run time: rounded before their op,
activations Q/DQ in the Scan body), ``probe`` (MACs, ranges, relative BOPs), ``deploy``,
``auto`` (posterior plan and search), ``bayesbits`` (reading a Bayesian-Bits model),
``report`` (``compress.json``, plots) and ``stage``.
"""

from .auto import AutoConfig, Trial, auto_plan, search
from .bayesbits import QuantizerState, bits_from_gates, plan_from_bayesian_bits
from .config import CompressConfig, CompressMode
from .deploy import COMPRESSION_KEY, CompressResult, LayerReport, deploy_plan, deploy_share
from .plan import ACT_BITS, WEIGHT_BITS, LayerPlan, Plan, load_plan
from .report import gate_verdict
from .share import ShareConfig, SharedLayer
from .stage import CompressOutcome, compress

__all__ = [
    "ACT_BITS",
    "AutoConfig",
    "CompressConfig",
    "CompressMode",
    "CompressOutcome",
    "QuantizerState",
    "Trial",
    "auto_plan",
    "bits_from_gates",
    "compress",
    "gate_verdict",
    "plan_from_bayesian_bits",
    "search",
    "COMPRESSION_KEY",
    "WEIGHT_BITS",
    "CompressResult",
    "LayerPlan",
    "LayerReport",
    "Plan",
    "ShareConfig",
    "SharedLayer",
    "deploy_plan",
    "deploy_share",
    "load_plan",
]
