"""normgpt's model package: the config, the model and the fused RMSNorm kernels.

Importing it registers `normgpt` with the transformers Auto classes, and marks the classes so that `save_pretrained`
copies their source next to the weights: a saved run directory then loads with
`AutoModelForCausalLM.from_pretrained(run_dir, trust_remote_code=True)` where this project is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_normgpt import NormGPTConfig
from .modeling_normgpt import NormGPTForCausalLM, NormGPTModel
from .norms import NORMS, LayerNorm, RMSNorm, build_norm, describe_norms
from .rmsnorm_triton import fused_add_rms_norm, fused_rms_norm

AutoConfig.register(NormGPTConfig.model_type, NormGPTConfig, exist_ok=True)
AutoModel.register(NormGPTConfig, NormGPTModel, exist_ok=True)
AutoModelForCausalLM.register(NormGPTConfig, NormGPTForCausalLM, exist_ok=True)
NormGPTConfig.register_for_auto_class()
NormGPTModel.register_for_auto_class("AutoModel")
NormGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "NORMS",
    "LayerNorm",
    "NormGPTConfig",
    "NormGPTForCausalLM",
    "NormGPTModel",
    "RMSNorm",
    "build_norm",
    "describe_norms",
    "fused_add_rms_norm",
    "fused_rms_norm",
]
