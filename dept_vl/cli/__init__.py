"""The command lines, one module per console script: `train` (dept-vl-train), `eval`
(dept-vl-eval), `features` (dept-vl-features), `demo` (dept-vl-demo), `report` (dept-vl-report),
`builtin` (python -m dept_vl.builtin); `data_flags` holds the data flags they share. Nothing in the
library or in training imports this package."""
