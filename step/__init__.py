"""Pipeline steps: each module exposes run(args) and runs alone as ``python -m step.<name>`` with run_sample's flags."""
