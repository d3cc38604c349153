"""The SAM family: perturbation rules shared by every trainer (``perturbation``) and the torch optimizer wrapper
(``optim.SAM``) used by the CIFAR pipeline (docs/science.md §8)."""
