"""vift: visual instruction-free fine-tuning (ViFT) of vision-language models, native to the Hugging Face stack.

Importing the package registers the ViFT classes with transformers' Auto classes for local use. Saved folders
carry the remote-code files, so users load them with `trust_remote_code=True` without installing this package.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .remote_code.configuration_vift import ViFTConfig
from .remote_code.modeling_vift import ViFTForConditionalGeneration, ViFTModel, ViFTPreTrainedModel
from .remote_code.processing_vift import ViFTProcessor


__version__ = "0.1.0"

AutoConfig.register(ViFTConfig.model_type, ViFTConfig, exist_ok=True)
# AutoModel gives the generating model, as users expect of `AutoModel.from_pretrained("org/vift", ...)`.
AutoModel.register(ViFTConfig, ViFTForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(ViFTConfig, ViFTForConditionalGeneration, exist_ok=True)
AutoProcessor.register(ViFTConfig, ViFTProcessor, exist_ok=True)

# Saving writes the remote-code files next to the weights and an `auto_map` into config.json
# (ViFTForConditionalGeneration.save_pretrained adds the `AutoModel` entry).
ViFTConfig.register_for_auto_class()
ViFTForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
ViFTProcessor.register_for_auto_class()

__all__ = [
    "ViFTConfig",
    "ViFTForConditionalGeneration",
    "ViFTModel",
    "ViFTPreTrainedModel",
    "ViFTProcessor",
]
