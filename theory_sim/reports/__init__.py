"""The study reports' logic: verdicts computed from a sweep's (or a study's) tables, the tables and figures they
write. One module per report; the scripts in ``studies/`` are thin mains that call them (docs/architecture.md)."""
