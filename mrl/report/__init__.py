"""Reports: per-run tables and plots, the study report, and comparisons across runs."""
