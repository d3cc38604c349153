"""The theory model: sparse-coding data, the two-layer ReLU CNN, its batched SGD/SAM trainer, the signal-noise
coefficient tracker, the test-error estimators, an nn.Module reference and the ``simulate``/``sharpness`` verbs
(docs/science.md §1-6)."""
