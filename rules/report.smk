# Plots of every stage's outputs, collected by `snakemake --report` (docs/evaluation.md#the-report).
