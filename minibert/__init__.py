"""minibert: BERT pretraining from scratch.

Every piece of BERT exists twice: a readable NumPy reference (``minibert.reference``) with every backward
pass written by hand, and a fast PyTorch model whose hot ops come from our own C++/CUDA extension
(``minibert.ops``). Tests prove the two agree; benchmarks show how much faster the fast one is.
"""
from minibert.config import BertConfig

__version__ = "0.1.0"
__all__ = ["BertConfig", "__version__"]
