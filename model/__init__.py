"""normgpt's model package: the config, the model, the norms and their registry, and the fused RMSNorm kernels.

A leaf: it imports the library (torch, transformers) and itself, never the training package, so its files run as
remote code beside a checkpoint where normgpt is not installed.

Importing it registers `normgpt` with the transformers Auto classes (causal LM, base model, sequence and token
classification), and marks the classes so that `save_pretrained` copies their source next to the weights: a saved
run directory then loads with `AutoModelForCausalLM.from_pretrained(run_dir, trust_remote_code=True)` where this
project is not installed.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_normgpt import NormGPTConfig
from .modeling_normgpt import (
    NormGPTForCausalLM,
    NormGPTForSequenceClassification,
    NormGPTForTokenClassification,
    NormGPTModel,
    QueryKeyProbe,
)
from .norms import NORMS, LayerNorm, NormSpec, RMSNorm, build_norm, describe_norms, register_norm
from .rmsnorm_triton import fused_add_rms_norm, fused_rms_norm

AUTO_CLASSES = {
    AutoModel: NormGPTModel,
    AutoModelForCausalLM: NormGPTForCausalLM,
    AutoModelForSequenceClassification: NormGPTForSequenceClassification,
    AutoModelForTokenClassification: NormGPTForTokenClassification,
}

AutoConfig.register(NormGPTConfig.model_type, NormGPTConfig, exist_ok=True)
NormGPTConfig.register_for_auto_class()
for auto_class, model_class in AUTO_CLASSES.items():
    auto_class.register(NormGPTConfig, model_class, exist_ok=True)
    model_class.register_for_auto_class(auto_class.__name__)

__all__ = [
    "NORMS",
    "LayerNorm",
    "NormGPTConfig",
    "NormGPTForCausalLM",
    "NormGPTForSequenceClassification",
    "NormGPTForTokenClassification",
    "NormGPTModel",
    "NormSpec",
    "QueryKeyProbe",
    "RMSNorm",
    "build_norm",
    "describe_norms",
    "fused_add_rms_norm",
    "fused_rms_norm",
    "register_norm",
]
