"""Phase-diagram sweeps: TOML specs (``spec``), the sweep directory on disk (``store``), the chunked resumable
runner (``runner``), its status, figures and the theorem checks (``verify``). Figures and verify read tables and the
store; they never import the runner (docs/architecture.md)."""
