"""The method registry: one module per fine-tuning method, registered beside its class.

    from dept_vl.methods import get_method
    get_method("dept")              # the module class; .config_class is its config dataclass

A new method is a module here (a config dataclass and a MethodModule subclass with `@register`,
see base.py) plus its import line below; a method defined elsewhere (a test, a plugin) registers
itself the same way. Nothing else names methods: adapters, transfer, training and the config
checks look them up here.
"""

from dept_vl.methods.registry import (
    METHODS, UnknownMethodError, config_from_dict, get_method, method_names, register, unregister,
)

# the built-in methods: importing a module registers its method (in this order: the order
# of `method_names()`, of error messages and of `--help`)
from dept_vl.methods import pt, dept, lora, full, adept  # noqa: E402,I001

__all__ = ["METHODS", "UnknownMethodError", "adept", "config_from_dict", "dept", "full",
           "get_method", "lora", "method_names", "pt", "register", "unregister"]
