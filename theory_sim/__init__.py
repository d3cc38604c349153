"""theory_sim: check theorems about Sharpness-Aware Minimization against simulation.

Papers (docs/science.md §10): [C23] Chen et al. 2023 (arXiv 2310.07269), [K23] Kou et al. 2023 (arXiv 2303.04145),
[F21] Foret et al. 2021 (arXiv 2010.01412), [K21] Kwon et al. 2021 (arXiv 2102.11600), [W23] Wen et al. 2023
(arXiv 2211.05729), [T24] arXiv 2411.01714.
"""
__version__ = "0.1.0"
