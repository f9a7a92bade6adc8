"""Reports of runs: ``build_report(run_dirs)`` writes one self-contained HTML page with PNGs."""
