"""dept_vl: Decomposed Prompt Tuning (DePT) for vision-language T5 models."""

from dept_vl.version import __version__  # noqa: E402
from dept_vl.methods.dept import (DePTConfig, DePTPrompt, dept_budget, dept_split,  # noqa: E402
                                  dept_splits)
from dept_vl.methods.adept import ADePTConfig, adept_budget, adept_split, adept_splits  # noqa: E402
from dept_vl.errors import UserError  # noqa: E402
from dept_vl.methods import get_method, register  # noqa: E402
from dept_vl.methods.lora import LoraMethodConfig  # noqa: E402
from dept_vl.methods.pt import PTConfig  # noqa: E402
from dept_vl.model import (VLT5, Adapter, AdapterError, AdapterMismatchError,  # noqa: E402
                           AdapterNotFoundError)
from dept_vl.vision import VisionConfig  # noqa: E402

__all__ = [
    "VLT5", "Adapter", "DePTConfig", "DePTPrompt", "PTConfig", "LoraMethodConfig",
    "get_method", "register", "VisionConfig", "UserError", "AdapterError",
    "AdapterMismatchError", "AdapterNotFoundError",
    "dept_budget", "dept_split", "dept_splits", "ADePTConfig", "adept_budget", "adept_split",
    "adept_splits", "__version__",
]
