"""Research code, run from a checkout beside `benchmarks/`: the method-comparison and few-shot
grids (`python -m research.experiments CONFIG`), their paired statistics (`stats`), tables and
plots. It uses dept_vl's library and training packages; nothing in dept_vl imports it."""
