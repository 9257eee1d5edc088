"""Config errors: `ConfigError`, and the `Where` that raises it (dept_vl/checks.py's, naming the
config file or "command line" and the key path), e.g.
`cfg.yaml: model.t5.d_modle: unknown key (did you mean 'd_model'?)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dept_vl import checks
from dept_vl.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad config file or command-line override; the message names the key (and file)."""


@dataclass(frozen=True)
class Where(checks.Where):
    """A place in a config: its errors are ConfigErrors."""

    kind: type[Exception] = ConfigError
