"""Converting original LLaVA-1.5 and Bunny checkpoints into ViFT checkpoints (`llava`). Entry point:
`python -m hub.convert_llava`.

Not part of the remote-code bundle.
"""

from .llava import ConversionError, build_plan, compare_with_llava, convert_checkpoint, detect_layout


__all__ = ["ConversionError", "build_plan", "compare_with_llava", "convert_checkpoint", "detect_layout"]
