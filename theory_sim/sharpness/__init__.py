"""Generic sharpness toolkit: Hessian spectrum and the sharpness notions of [W23] for any loss of parameters.

    obj = Objective.from_module(model, F.cross_entropy, loader, train_mode=False)   # or Objective.from_function
    lam = top_eigenvalues(obj, k=3).values          # Lanczos (or method="power")
    tr = hutchinson_trace(obj, 100)                 # Estimate(value, stderr, n)
    dens = slq_density(obj, n_probes=10, n_steps=80)
    r_max(obj, rho=0.05), r_asc(obj, 0.05), r_avg(obj, 0.05, 256)

Modules: ``objective`` (loss/grad/HVP on a list of tensors), ``hessian`` (Lanczos, power, Hutchinson, SLQ),
``notions`` (R_Max, R_Asc, R_Avg), ``estimate`` (Monte Carlo estimates, seeding).

[W23] Wen, Ma, Li. How Does Sharpness-Aware Minimization Minimize Sharpness? ICLR 2023, arXiv 2211.05729.
[F21] Foret, Kleiner, Mobahi, Neyshabur. Sharpness-Aware Minimization. ICLR 2021, arXiv 2010.01412.
"""
from theory_sim.sharpness.estimate import Estimate, make_generator
from theory_sim.sharpness.hessian import (
                                          Eigenpairs,
                                          SpectralDensity,
                                          grad_top_eigvec_cosine,
                                          hutchinson_trace,
                                          lanczos,
                                          slq_density,
                                          top_eigenvalues,
)
from theory_sim.sharpness.notions import r_asc, r_avg, r_max
from theory_sim.sharpness.objective import (
                                          DEFAULT_HVP_METHOD,
                                          HVP_METHODS,
                                          Objective,
                                          flatten,
)

__all__ = ["Objective", "flatten", "HVP_METHODS", "DEFAULT_HVP_METHOD", "Estimate", "make_generator",
           "Eigenpairs", "SpectralDensity", "top_eigenvalues", "lanczos", "hutchinson_trace", "slq_density",
           "grad_top_eigvec_cosine", "r_max", "r_asc", "r_avg"]
