"""vlqc: telecom installation-ticket QC with a fine-tuned Qwen3-VL."""

__version__ = "0.1.0"
