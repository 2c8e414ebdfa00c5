"""Library code the steps share, by concern:

- ``data``: the run's dataset (toy generation, label and list derivation), id lists, labels, artifact paths;
- ``models``: the classifier of a run (net.registry) built from the flags, and the trained one loaded;
- ``checkpoints``: strict state_dict loading, atomic saving, epoch-level resume of training steps;
- ``parallel``: torchrun pieces (id shards, rank-0 output, per-rank batches, DDP wrapping, loaders);
- ``training``: the one training loop (``fit``) of the training steps;
- ``evaluation``: streaming per-image scoring, the threshold sweep, the printed table;
- ``reports``: warnings about degenerate output (empty seeds, classes never predicted, rare classes);
- ``drs``: what the DRS steps share (square-image loader, trunk init, map fusion, GT-based epoch selection);
- ``single_stage``: what the ToCo and PUFS steps share (their networks and views from the flags);
- ``entry``: the command-line entry point of run_sample.py and of ``python -m step.<name>``.
"""
