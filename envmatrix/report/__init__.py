"""Reports: the markdown report, CSV/JSON exports, plots and run-to-run comparisons."""
