"""DePT's public names, kept where dept_vl 0.1 had them: the method lives in
`dept_vl/methods/dept.py` (and its soft-prompt half in `dept_vl/methods/pt.py`)."""

from dept_vl.methods.base import PROMPT_INITS
from dept_vl.methods.dept import (DePTConfig, DePTPrompt, dept_budget, dept_param_groups,
                                  dept_split, dept_splits, fit_max_length)
from dept_vl.methods.pt import init_prompt_from_embeddings

__all__ = ["PROMPT_INITS", "DePTConfig", "DePTPrompt", "dept_budget", "dept_param_groups",
           "dept_split", "dept_splits", "fit_max_length", "init_prompt_from_embeddings"]
