"""torchkd — knowledge distillation for PyTorch."""

from torchkd.distiller import Distiller, DistillOutput, Term

__all__ = ["DistillOutput", "Distiller", "Term", "__version__"]

__version__ = "0.1.0"
