"""Training: the config a run reads (`config`), the model it starts from and what trains in it
(`setup`), its data and task schedule (`taskdata`), the loop (`loop`), checkpoints, results,
tracking, tokenizer coverage and transfer from source adapters. The library (`dept_vl`) never
imports this package; the command lines (`dept_vl.cli`) do."""
