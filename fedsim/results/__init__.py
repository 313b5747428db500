"""Run directories: metrics.jsonl, comm.csv, summary.json, log.txt, plots/, checkpoints/."""
