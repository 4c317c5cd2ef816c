"""Plots and summary tables of the pipeline's outputs, collected by `snakemake --report`.

One module per area (`training`, `sweeps`, `stage_a`, `stage_b`) and the `headline` page; each
function reads documented files (docs/evaluation.md, docs/stage-a.md, docs/stage-b.md), validates
them against their schemas, and writes one PNG or HTML file atomically. `figure` holds what every
plot shares: the Agg backend, a CJK font for mission names, the atomic save.
"""
