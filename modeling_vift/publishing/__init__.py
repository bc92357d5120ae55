"""Publishing to the Hugging Face Hub: a model checkpoint (`model`), a converted training dataset (`dataset`), the
upload and file plan they share (`upload`), and the fresh-process check that a folder loads as remote code
(`fresh_process`). Entry points: `python -m hub.push_model`, `python -m hub.push_dataset`.

Not part of the remote-code bundle.
"""

from .dataset import DatasetConversionError, convert_dataset, push_dataset
from .model import build_generation_config, push_model, verify_folder
from .upload import PublishError


__all__ = [
    "DatasetConversionError",
    "PublishError",
    "build_generation_config",
    "convert_dataset",
    "push_dataset",
    "push_model",
    "verify_folder",
]
